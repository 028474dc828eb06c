import numpy as np
import pytest
import torch

from agents.learners.grpo import GRPO, GRPOConfig
from agents.learners.riser import (
    RISER,
    RISERConfig,
    certainty_weights,
    kl_cov_penalty,
    unique_group_selection,
)
from agents.model.policy import make_rollout_env
from recgym.envs import RecGenTask
from recgym.tree import PrefixTree


def rollout(task, policy, requests=4, m=8, seed=0, temperature=2.0):
    envs = make_rollout_env(task, requests * m)
    return policy.rollout(envs, group_size=m, rows=np.arange(requests), temperature=temperature,
                          generator=torch.Generator().manual_seed(seed), seed=seed)


def test_unique_group_selection_by_hand():
    terminal = np.array([[7, 7, 7, 7, 7], [1, 2, 1, 3, 4], [5, 6, 5, 6, 5]])
    # Request 1's target is item 4 (sampled last), request 2's is item 5 (sampled three times).
    hits = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 1, 0, 1]], dtype=bool)
    select, distinct = unique_group_selection(terminal, 4, hits)
    assert distinct.tolist() == [1, 4, 2]
    # The hit's first copy, then first copies of missed items, then the rest (repeats, of the hit too),
    # each in sampling order. Request 2: hit 5 (col 0), miss 6 (col 1), then the repeats (cols 2, 3).
    assert select.reshape(3, 4).tolist() == [[0, 1, 2, 3], [9, 5, 6, 8], [10, 11, 12, 13]]


def test_a_repeated_hit_never_displaces_a_distinct_miss():
    # The target 4 was sampled three times; the misses 2, 3, 5 once each; n = 4.
    terminal = np.array([[4, 4, 2, 3, 4, 5], [2, 4, 2, 4, 3, 3]])
    select, distinct = unique_group_selection(terminal, 4, terminal == 4)
    # Request 0: hit 4 (col 0), then the misses 2, 3, 5 (cols 2, 3, 5); keeping every copy of the hit
    # first would give cols [0, 1, 4, 2] and drop the distinct misses 3 and 5.
    # Request 1: hit 4 (col 1), misses 2, 3 (cols 0, 4), then the first repeat (col 2).
    assert (select.reshape(2, 4) % 6).tolist() == [[0, 2, 3, 5], [1, 0, 4, 2]]
    assert distinct.tolist() == [4, 3]
    assert [sorted(set(terminal[i][select.reshape(2, 4)[i] % 6].tolist())) for i in range(2)] == [
        [2, 3, 4, 5], [2, 3, 4]]


def test_a_hit_seen_after_the_nth_distinct_item_survives_de_duplication():
    terminal = np.array([[1, 2, 3, 4, 5, 6]])
    hits = terminal == 6  # the ground truth comes last, after n = 3 distinct misses
    select, _ = unique_group_selection(terminal, 3, hits)
    assert select.tolist() == [5, 0, 1]
    # Never more copies of a rare hit than were sampled (the old cyclic fill doubled them).
    terminal = np.array([[9, 8, 9, 9]])
    select, _ = unique_group_selection(terminal, 4, terminal == 8)
    assert int((terminal.reshape(-1)[select] == 8).sum()) == 1


def test_kl_cov_selects_top_covariance_tokens_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-4.0, -0.5, 0.0]])
    old = torch.tensor([[-1.5, -2.0, -9.0], [-4.0, -1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # Valid tokens: A = [1, 1, -1, -1] (mean 0), log pi = [-1, -2, -4, -0.5] (mean -1.875)
    # Cov = A * (log pi + 1.875) = [0.875, -0.125, 2.125, -1.375]: the top one is token (1, 0).
    penalty, selected = kl_cov_penalty(logp, old, adv, mask, k=0.25, coef=2.0)
    assert selected.tolist() == [[False, False, False], [True, False, False]]
    assert penalty[1, 0] == 0.0  # |log pi - log pi_old| = 0 there
    penalty, selected = kl_cov_penalty(logp, old, adv, mask, k=0.5, coef=2.0)  # two tokens
    assert selected.tolist() == [[True, False, False], [True, False, False]]
    assert penalty[0, 0].item() == pytest.approx(2.0 * 0.5)
    _, selected = kl_cov_penalty(logp, old, adv, mask, k=1e-9, coef=1.0)  # at least one token
    assert int(selected.sum()) == 1
    # k N = 0.6 * 4 = 2.4 tokens: verl takes int(2.4) = 2 (ceil would take 3)
    _, selected = kl_cov_penalty(logp, old, adv, mask, k=0.6, coef=1.0)
    assert selected.tolist() == [[True, False, False], [True, False, False]]


def test_certainty_weights_from_a_known_tree():
    # Items: "5 1 <e>", "5 2 <e>", "7 <e>": the root and "5" branch; "5 1", "5 2", "7" force <e>.
    tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
    responses = np.array([[5, 2, 0], [7, 0, -1]])
    states = torch.as_tensor(tree.path_states(responses))
    weights = certainty_weights(tree.torch_tables("cpu"), states, states >= 0, 0.7)
    np.testing.assert_allclose(weights, [[1.0, 1.0, 0.7], [1.0, 0.7, 0.0]])


def _loss_and_grads(policy, learner, batch):
    policy.model.zero_grad()
    loss, stats = learner.loss(policy, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in policy.model.parameters()], stats


def test_riser_with_every_component_off_is_exactly_grpo(tiny_sid):
    task, policy = tiny_sid
    # A graded reward from the env's reward function, so that every group has non-zero advantages.
    graded = RecGenTask(task.dataset, split="train", tokenizer=task.items,
                        reward_fn=lambda items, target, example: float(items[0] % 3))
    ro = rollout(graded, policy, m=8)
    grpo = GRPO(GRPOConfig(group_size=8, clip_high=0.28))
    riser = RISER(RISERConfig(group_size=8, clip_high=0.28, oversample=8, simpo_weight=0.0, certainty_d=1.0,
                              kl_cov_k=0.0))
    batch_g, batch_r = grpo.make_batch(policy, ro), riser.make_batch(policy, ro)
    assert torch.equal(batch_g.responses, batch_r.responses)
    assert torch.equal(batch_g.advantages, batch_r.advantages)
    # Off-policy (stored old log-probs, perturbed) so that the clip acts.
    with torch.no_grad():
        old = grpo.logprobs(policy, batch_g)[0] + 0.3 * torch.randn(batch_g.responses.shape,
                                                                   generator=torch.Generator().manual_seed(0))
    batch_g.old_logp = batch_r.old_logp = old * batch_g.mask
    batch_g.ref_logp = batch_r.ref_logp = (old - 0.2) * batch_g.mask  # GRPO's default beta > 0: a KL term
    loss_g, grads_g, stats_g = _loss_and_grads(policy, grpo, batch_g)
    loss_r, grads_r, _ = _loss_and_grads(policy, riser, batch_r)
    assert stats_g["clip_frac"] > 0 and (batch_g.group_rewards().std(dim=1) > 0).all()
    assert torch.equal(loss_g, loss_r)
    for a, b in zip(grads_g, grads_r):
        assert torch.equal(a, b)


def test_riser_components(tiny_sid):
    task, policy = tiny_sid
    ro = rollout(task, policy, m=12, seed=1)
    base = dict(group_size=6, oversample=12, certainty_d=1.0, kl_cov_k=0.0, beta=0.0)
    off = RISER(RISERConfig(**base, simpo_weight=0.0))
    on = RISER(RISERConfig(**base, simpo_weight=0.5, simpo_beta=2.0, simpo_gamma=0.3))
    batch = on.make_batch(policy, ro)
    # Oversampling: groups of n = 6 from m = 12 rollouts: the hit's first copy, first copies of
    # misses, the rest (repeats).
    assert batch.responses.shape[0] == 4 * 6
    for g in range(4):
        raw = ro.terminal[g * 12:(g + 1) * 12].tolist()
        hit = ro.hits[g * 12:(g + 1) * 12].tolist()
        seen, first_hits, firsts, rest = set(), [], [], []
        for i, item in enumerate(raw):
            (rest if item in seen else first_hits if hit[i] else firsts).append(i)
            seen.add(item)
        order = first_hits + firsts + rest
        assert batch.terminal[g * 6:(g + 1) * 6].tolist() == [raw[i] for i in order[:6]]
    assert batch.unique.tolist() == [len(set(ro.terminal[g * 12:(g + 1) * 12].tolist())) for g in range(4)]
    # SimPO on failed groups only: L(w) - L(0) = w * L_SimPO, L_SimPO computed here by hand.
    failed = torch.nonzero(~batch.hits.reshape(4, 6).any(dim=1)).squeeze(1).tolist()
    assert len(failed) > 0
    with torch.no_grad():
        loss_on, stats = on.loss(policy, batch)
        loss_off, _ = off.loss(policy, batch)
        logp = on.logprobs(policy, batch, extra=batch.chosen, extra_index=torch.arange(4))[0]
    b = batch.responses.shape[0]
    terms = []
    for g in failed:
        chosen_len = int((batch.chosen[g] >= 0).sum())
        r_w = 2.0 / chosen_len * float(logp[b + g, :chosen_len].sum())  # r(y_w) = beta / |y| sum log pi
        seen = set()
        for row in range(g * 6, (g + 1) * 6):
            item = int(batch.terminal[row])
            if item in seen:
                continue  # each distinct failed item once
            seen.add(item)
            length = int(batch.mask[row].sum())
            r_l = 2.0 / length * float(logp[row, :length].sum())
            terms.append(-np.log(1 / (1 + np.exp(-(r_w - r_l - 0.3)))))  # -log sigmoid(margin - gamma)
    assert stats["simpo_pairs"] == len(terms)
    assert (loss_on - loss_off).item() == pytest.approx(0.5 * float(np.mean(terms)), rel=1e-4, abs=1e-6)


def test_riser_simpo_rewards_carry_the_certainty_weights(tiny_sid):
    """RISER's SimPO term by hand with r(y) = beta / |y| sum_t w_t log pi_t, w_t = d on forced tokens."""
    task, policy = tiny_sid
    ro = rollout(task, policy, m=12, seed=1)
    d, beta, gamma, weight = 0.5, 2.0, 0.3, 0.5
    base = dict(group_size=6, oversample=12, certainty_d=d, kl_cov_k=0.0, beta=0.0, simpo_beta=beta,
                simpo_gamma=gamma)
    on = RISER(RISERConfig(**base, simpo_weight=weight))
    off = RISER(RISERConfig(**base, simpo_weight=0.0))
    batch = on.make_batch(policy, ro)
    failed = torch.nonzero(~batch.hits.reshape(4, 6).any(dim=1)).squeeze(1).tolist()
    assert len(failed) > 0
    b = batch.responses.shape[0]
    with torch.no_grad():
        logp, entropy = on.logprobs(policy, batch, extra=batch.chosen, extra_index=torch.arange(4))
    # The tiny model's forced tokens (the SIDs' end tokens) have nearly equal log-probs in every item,
    # so their weight would nearly cancel in r(y_w) - r(y_l): spread them (seeded) so that it shows.
    logp = logp - 2.0 * torch.rand(logp.shape, generator=torch.Generator().manual_seed(0))

    def logprobs(policy, batch, extra=None, extra_index=None):  # rows [:B], then the chosen rows asked
        rows = torch.arange(b) if extra is None else torch.cat([torch.arange(b), b + extra_index])
        return logp[rows], entropy[rows]

    on.logprobs = off.logprobs = logprobs
    with torch.no_grad():
        loss_on, stats = on.loss(policy, batch)
        loss_off, _ = off.loss(policy, batch)
    logp = logp.double()

    def reward(row, tokens, weighted):
        """beta / |y| * sum_t w_t log pi_t, w_t = 1 where the token's node branches, d where it is forced."""
        states = task.tree.path_states(np.array(tokens))
        w = np.where(task.tree.branching(states), 1.0, d) if weighted else np.ones(len(tokens))
        return beta / len(tokens) * float((torch.as_tensor(w) * logp[row, :len(tokens)]).sum())

    expected = {True: [], False: []}
    forced = 0
    for g in failed:
        chosen = batch.chosen[g][batch.chosen[g] >= 0].tolist()
        forced += int((~task.tree.branching(task.tree.path_states(np.array(chosen)))).sum())
        seen = set()
        for row in range(g * 6, (g + 1) * 6):
            if int(batch.terminal[row]) in seen:
                continue  # each distinct failed item once
            seen.add(int(batch.terminal[row]))
            tokens = batch.responses[row][batch.mask[row]].tolist()
            for weighted in (True, False):
                margin = reward(b + g, chosen, weighted) - reward(row, tokens, weighted)
                expected[weighted].append(np.log1p(np.exp(-(margin - gamma))))  # -log sigmoid(m - gamma)
    assert forced > 0 and stats["simpo_pairs"] == len(expected[True])
    with_w, without_w = weight * np.mean(expected[True]), weight * np.mean(expected[False])
    assert abs(with_w - without_w) > 1e-2 * with_w  # the weights matter (100x the tolerance below)
    assert (loss_on - loss_off).item() == pytest.approx(with_w, rel=1e-4, abs=1e-6)


def _leaf_logprobs(learner, policy, batch):
    """Make ``learner.loss`` read its log-probs from a leaf tensor, so token gradients can be compared."""
    with torch.no_grad():
        logp, entropy = learner.logprobs(policy, batch, extra=batch.chosen, extra_index=torch.arange(
            batch.num_groups))
    leaf = logp.clone().requires_grad_(True)
    b, t = batch.responses.shape

    def logprobs(policy, batch, extra=None, extra_index=None):
        rows = b + (0 if extra_index is None else len(extra_index))
        return leaf[:rows], entropy[:rows]

    learner.logprobs = logprobs
    return leaf


def test_default_riser_weighs_forced_tokens_d_times_grpo(tiny_sid):
    """Default RISER (full vocabulary): each forced token's gradient is d x GRPO's, branching ones 1 x."""
    task, policy = tiny_sid
    ro = rollout(task, policy, m=6, seed=2)
    grads = {}
    for name, learner in (("grpo", GRPO(GRPOConfig(group_size=6, beta=0.0))),
                          ("riser", RISER(RISERConfig(group_size=6, oversample=6, beta=0.0)))):
        batch = learner.make_batch(policy, ro)
        batch.hits[:] = True  # no failed group: SimPO stays out of this comparison
        batch.rewards = torch.arange(len(batch.rewards), dtype=torch.float32) % 3  # graded: A_i != 0
        batch.advantages = batch.rewards - batch.group_rewards().mean(dim=1).repeat_interleave(6)
        leaf = _leaf_logprobs(learner, policy, batch)
        learner.loss(policy, batch)[0].backward()
        b, t = batch.responses.shape
        grads[name] = leaf.grad[:b, :t]
    assert policy.objective == "full"
    branching = policy.tables.branching(batch.states.clamp(min=0)) & batch.mask
    forced = ~policy.tables.branching(batch.states.clamp(min=0)) & batch.mask
    assert forced.any() and branching.any() and (grads["grpo"][forced] != 0).any()
    torch.testing.assert_close(grads["riser"][forced], 0.7 * grads["grpo"][forced])
    torch.testing.assert_close(grads["riser"][branching], grads["grpo"][branching])


def test_forced_tokens_carry_gradient_through_the_model_scaled_by_d(tiny_sid, full_vocab_logprobs_by_hand):
    """Through the real model (not a leaf of log-probs): under the default full-vocabulary objective a
    forced token (one allowed child) has log pi < 0 and a gradient, and d scales exactly that part.

    GRPO loss on-policy (rho = 1), beta = 0, per-sequence mean: grad L(d) = -(1/B) sum_b A_b / |y_b|
    sum_t w_t grad log pi_bt, so grad L(1) - grad L(0.7) = 0.3 * grad of
    -(1/B) sum_b A_b / |y_b| sum_{t forced} log pi_bt, computed here from the model's logits.
    """
    task, policy = tiny_sid
    ro = rollout(task, policy, m=6, seed=2)
    grads = {}
    for d in (1.0, 0.7):
        learner = RISER(RISERConfig(group_size=6, oversample=6, beta=0.0, simpo_weight=0.0, kl_cov_k=0.0,
                                    certainty_d=d))
        batch = learner.make_batch(policy, ro)
        batch.advantages = torch.arange(len(batch.rewards), dtype=torch.float32) % 3 - 1.0  # A_i != 0
        _, grads[d], _ = _loss_and_grads(policy, learner, batch)
    forced = torch.as_tensor(~task.tree.branching(batch.states.clamp(min=0).numpy())) & batch.mask
    assert policy.objective == "full" and forced.any()
    policy.model.zero_grad()
    logp = full_vocab_logprobs_by_hand(policy, batch)
    lengths = batch.mask.sum(dim=1)
    forced_part = -(batch.advantages / lengths * (logp * forced).sum(dim=1)).mean()
    forced_part.backward()
    expected = [0.3 * p.grad.clone() for p in policy.model.parameters()]
    policy.model.zero_grad()
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1e-4
    for g1, g07, e in zip(grads[1.0], grads[0.7], expected):
        torch.testing.assert_close(g1 - g07, e, rtol=1e-3, atol=1e-4 * scale)
    # The learner's log-probs are the model's full-vocabulary ones; pi < 1 on forced tokens.
    with torch.no_grad():
        learner_logp = learner.logprobs(policy, batch)[0]
    torch.testing.assert_close(learner_logp[batch.mask], logp.detach()[batch.mask], rtol=1e-4, atol=1e-4)
    assert (learner_logp[forced] < -1e-3).all()


def test_every_riser_component_changes_the_loss_at_the_defaults(tiny_sid):
    task, policy = tiny_sid
    ro = rollout(task, policy, m=20, seed=3)
    full = RISER(RISERConfig(oversample=20, group_size=16))
    batch = full.make_batch(policy, ro)
    with torch.no_grad():  # pi != pi_old (as after a first minibatch update), and a reference
        noise = torch.randn(batch.responses.shape, generator=torch.Generator().manual_seed(0))
        batch.old_logp = (full.logprobs(policy, batch)[0] + 0.2 * noise) * batch.mask
        batch.ref_logp = batch.old_logp
        reference = full.loss(policy, batch)[0]
        for off in ({"simpo_weight": 0.0}, {"certainty_d": 1.0}, {"kl_cov_k": 0.0}):
            other = RISER(RISERConfig(oversample=20, group_size=16, **off)).loss(policy, batch)[0]
            assert abs(float(other - reference)) > 1e-6, off
    plain = RISER(RISERConfig(oversample=None, group_size=16)).make_batch(policy, rollout(task, policy, m=16))
    assert plain.responses.shape == (4 * 16, plain.responses.shape[1])  # oversampling off: m = n
    assert (batch.unique >= 1).all() and batch.responses.shape[0] == 4 * 16


def test_kl_cov_in_riser_loss_matches_verl_formula(tiny_sid):
    """RISER.loss with KL-Cov only == an independent re-computation of verl's kl_cov, loss and gradient."""
    task, policy = tiny_sid
    ro = rollout(task, policy, m=6, seed=4)
    k, coef = 0.1, 1.0
    learner = RISER(RISERConfig(group_size=6, oversample=6, simpo_weight=0.0, certainty_d=1.0, beta=0.0,
                                kl_cov_k=k, kl_cov_coef=coef))
    batch = learner.make_batch(policy, ro)
    batch.advantages = torch.linspace(-1, 1, len(batch.advantages))
    leaf = _leaf_logprobs(learner, policy, batch)
    b, t = batch.responses.shape
    old = (leaf.detach()[:b, :t] - 0.5 * torch.sin(torch.arange(b * t, dtype=torch.float32)).reshape(b, t))
    batch.old_logp = old * batch.mask
    loss, stats = learner.loss(policy, batch)
    loss.backward()
    got = leaf.grad[:b, :t].clone()
    # verl: pg = -A * ratio on every valid token; the top max(1, int(k N)) tokens by
    # Cov = (A - mean A)(log pi - mean log pi) get + coef * |log pi - log pi_old|; per-sequence mean.
    x = leaf.detach()[:b, :t].clone().requires_grad_(True)
    mask = batch.mask
    adv = batch.advantages[:, None].expand(b, t)
    ratio = torch.exp(x - batch.old_logp)
    pg = -adv * ratio
    pg_kl = pg + coef * (x - batch.old_logp).abs()
    valid = torch.nonzero(mask.reshape(-1)).squeeze(1)
    a_v, lp_v = adv.reshape(-1)[valid], x.detach().reshape(-1)[valid]
    cov = (a_v - a_v.mean()) * (lp_v - lp_v.mean())
    top = valid[torch.topk(cov, max(1, int(k * len(valid)))).indices]
    chosen = torch.zeros(b * t, dtype=torch.bool)
    chosen[top] = True
    per_token = torch.where(chosen.reshape(b, t), pg_kl, pg) * mask
    expected = (per_token.sum(dim=1) / mask.sum(dim=1)).mean()
    expected.backward()
    assert stats["kl_cov_tokens"] == len(top) > 1
    torch.testing.assert_close(loss.detach(), expected.detach())
    torch.testing.assert_close(got, x.grad)
    # The penalty's own gradient is non-zero once pi != pi_old: without it the gradient differs there.
    y = x.detach().clone().requires_grad_(True)
    ((-adv * torch.exp(y - batch.old_logp) * mask).sum(dim=1) / mask.sum(dim=1)).mean().backward()
    sel = chosen.reshape(b, t)
    assert (got[sel] - y.grad[sel]).abs().min() > 1e-4 and torch.allclose(got[~sel], y.grad[~sel])
    with pytest.raises(ValueError, match="oversample"):
        RISERConfig(group_size=16, oversample=8)
