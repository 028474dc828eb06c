import copy
import random

import numpy as np
import pytest
import torch

from agents.minirec import (
    CurriculumSampler,
    GradientProjector,
    _Groups,
    alignment,
    curriculum,
    describe_subset,
    greedy_select,
    hidden_directions,
    learnability,
    proxy_rollouts,
    representativeness,
    request_embeddings,
    run_selection,
    select,
    train_proxy,
)


def test_learnability_prefers_moderate_difficulty():
    r_bar = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    L = learnability(r_bar)  # sigma = std(r_bar) = sqrt(0.125)
    expected = np.exp(-((r_bar - 0.5) ** 2) / (2 * 0.125))
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(L, expected)
    assert L.argmax() == 2 and L[0] == L[4] == 0.0 and L[1] == pytest.approx(L[3])
    # Never-solved requests rank below partly solved ones, whatever mu.
    assert learnability(np.array([0.0, 0.1, 0.2]), mu=0.5).tolist()[0] == 0.0
    # Official gaussian_scores: a constant pool (std 0 -> sigma 1e-6) gets ones, sigma=0 means the std,
    # mu=None the pool mean.
    assert learnability(np.full(4, 0.25)).tolist() == [1.0] * 4
    np.testing.assert_allclose(learnability(r_bar, sigma=0), L)
    r = np.array([0.0, 0.1, 0.5])  # mean 0.2: 0.1 is closest (0.1 away), 0.5 farthest (0.3)

    def g(gap):
        return np.exp(-(gap**2) / (2 * r.std() ** 2))

    expected = [(g(0.2) - g(0.3)) / (g(0.1) - g(0.3)), 1.0, 0.0]
    assert learnability(r, mu=None).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="sigma"):
        learnability(r, sigma=-1.0)


def test_greedy_picks_by_hand():
    # MiniRec's D is the cosine distance on L2-normalised embeddings (official maxmin_select):
    # row 1 points almost the way row 0 does but is far from it in length.
    emb = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    scores = np.array([1.0, 0.9, 0.5, 0.45])
    c1, c3 = 1 - 10 / np.sqrt(101), 1 - 1 / np.sqrt(2)  # 0.00496 and 0.29289
    # Pick 0 (top score). d(., {0}) = [0, c1, 1, c3], min 0, max 1 -> V = [-, 0.9 c1, 0.5, 0.45 c3]
    # = [-, 0.0045, 0.5, 0.132]: pick 2. d(., {0, 2}) = [0, c1, 0, c3] (1 - cos(row 1, row 2) = 0.90
    # and 1 - cos(row 3, row 2) = c3 do not lower them) -> D = [0, c1 / c3, 0, 1]: V3 = 0.45 > V1 = 0.015.
    assert 0.9 * c1 < 0.5 and 0.45 * c3 < 0.5 and 0.9 * c1 / c3 < 0.45
    assert greedy_select(emb, scores, 4).tolist() == [0, 2, 3, 1]
    assert select("minirec", 3, embeddings=emb, learn=scores, represent=np.zeros(4)).tolist() == [0, 2, 3]
    # The same rows by Euclidean distance: d(., {0}) = [0, 9.06, 1.41, 1] -> V = [-, 0.9, 0.078, 0.050]: 1;
    # d(., {0, 1}) = [0, 0, 1.41, 1] -> V = [-, -, 0.5, 0.318]: 2, then 3.
    assert greedy_select(emb, scores, 4, metric="euclidean").tolist() == [0, 1, 2, 3]
    # D is min-maxed over the whole pool, selected rows included (official): a zero embedding is at
    # distance 1 from everything, itself too, so after picking it every D is 0 and the lower index wins.
    zero = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert greedy_select(zero, np.array([1.0, 0.2, 0.8]), 3).tolist() == [0, 1, 2]
    # alpha weighs learnability against representativeness (the first pick is argmax alpha L + R).
    represent = np.array([0.0, 0.0, 0.0, 2.0])
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=1.0).tolist() == [3]
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=5.0).tolist() == [0]
    with pytest.raises(ValueError, match="metric"):
        greedy_select(emb, scores, 2, metric="manhattan")
    with pytest.raises(ValueError, match="embeddings must be"):
        greedy_select(emb[:3], scores, 2)


def test_selectors_sizes_determinism_and_errors():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8))
    learn = rng.random(200)
    a = select("random", 0.1, learn=learn, seed=3)
    assert len(a) == 20 and len(set(a.tolist())) == 20
    assert np.array_equal(a, select("random", 0.1, learn=learn, seed=3))
    assert select("learnability", 5, learn=learn).tolist() == np.argsort(-learn)[:5].tolist()
    k = select("kcenter", 10, embeddings=emb, seed=1)
    assert np.array_equal(k, select("kcenter", 10, embeddings=emb, seed=1)) and len(set(k.tolist())) == 10
    # K-center spreads out: its picks are farther apart than a random subset's on average.
    def min_gap(rows):
        d = np.linalg.norm(emb[rows][:, None] - emb[rows][None], axis=-1)
        return d[~np.eye(len(rows), dtype=bool)].min()
    assert min_gap(k) > min_gap(select("random", 10, learn=learn, seed=1))
    with pytest.raises(ValueError, match="subset size"):
        select("random", 500, learn=learn)
    with pytest.raises(ValueError, match="needs embeddings"):
        select("minirec", 5, learn=learn)
    with pytest.raises(ValueError, match="unknown selection"):
        select("best", 5, learn=learn)


def _python_shuffle(n, seed):
    """Python's random.shuffle written out (Fisher-Yates with getrandbits rejection sampling)."""
    rng = random.Random(seed)
    x = list(range(n))
    for i in reversed(range(1, n)):
        bits = (i + 1).bit_length()
        j = rng.getrandbits(bits)
        while j > i:
            j = rng.getrandbits(bits)
        x[i], x[j] = x[j], x[i]
    return x


def test_curriculum_follows_the_official_folds():
    selected = np.array([16, 10, 13, 11, 15, 12, 14])  # pick order
    r_bar = np.zeros(20)
    r_bar[10:17] = [0.25, 0.5, 1.0, 0.75, 0.5, 0.9, 0.25]  # r_bar of rows 10..16
    # Official: ids in ascending order, random.seed(42); random.shuffle; n_folds = 7 // 3 = 2 folds
    # of 7 // 2 = 3, the last taking the remainder; each fold by r_bar descending, ties in shuffled order.
    perm = _python_shuffle(7, 42)
    assert perm == [1, 3, 4, 2, 6, 0, 5]
    state = random.getstate()
    try:
        official = list(range(7))
        random.seed(42)
        random.shuffle(official)  # the official call itself
    finally:
        random.setstate(state)
    assert official == perm
    # shuffled rows: [11, 13, 14, 12, 16, 10, 15]; folds [11, 13, 14] and [12, 16, 10, 15]:
    # r_bar [.5, .75, .5] -> [13, 11, 14]; [1.0, .25, .25, .9] -> [12, 15, 16, 10] (16 before 10:
    # shuffled order)
    assert curriculum(selected, r_bar, group=3).tolist() == [13, 11, 14, 12, 15, 16, 10]
    # Folds cut in pick order would give [13, 16, 10, 12, 11, 15, 14]; a separate remainder fold [15]
    # would give [13, 11, 14, 12, 16, 10, 15].
    # seed 7: shuffle [5, 6, 4, 0, 3, 1, 2] -> [15, 16, 14 | 10, 13, 11, 12] -> [15, 14, 16, 12, 13, 11, 10]
    assert _python_shuffle(7, 7) == [5, 6, 4, 0, 3, 1, 2]
    assert curriculum(selected, r_bar, group=3, seed=7).tolist() == [15, 14, 16, 12, 13, 11, 10]
    # folds=1 (or group >= 7): one fold, all of it easy -> hard; the shuffle only orders ties.
    assert curriculum(selected, r_bar, group=64).tolist() == [12, 15, 13, 11, 14, 16, 10]
    assert curriculum(selected, r_bar, folds=7).tolist() == [11, 13, 14, 12, 16, 10, 15]  # the shuffle
    with pytest.raises(ValueError, match="folds"):
        curriculum(selected, r_bar, folds=8)
    order = curriculum(selected, r_bar, group=3)
    sampler = CurriculumSampler(order, batch_size=3)
    assert [sampler.rows(s).tolist() for s in range(3)] == [[13, 11, 14], [12, 15, 16], [10, 13, 11]]
    stats = describe_subset(selected, r_bar, np.linspace(0, 1, 20))
    assert stats["size"] == 7 and stats["solved_always"] == pytest.approx(1 / 7)


def test_proxy_rewards_and_embeddings_from_a_policy(tiny_sid):
    task, policy = tiny_sid
    rows = np.arange(10)
    proxy = proxy_rollouts(policy, task, rows, rollouts=4, requests_per_batch=4, progress=False, seed=2)
    r_bar = proxy.mean_rewards
    assert r_bar.shape == (10,) and ((r_bar >= 0) & (r_bar <= 1)).all()
    again = proxy_rollouts(policy, task, rows, rollouts=4, requests_per_batch=4, progress=False, seed=2)
    assert np.array_equal(proxy.rewards, again.rewards) and np.array_equal(proxy.responses, again.responses)
    # Every response is a real catalogue item: its tokens walk the tree to a complete state.
    ends = [task.tree.walk(r[r >= 0].tolist()) for r in proxy.responses.reshape(-1, proxy.responses.shape[2])]
    assert task.tree.is_complete(np.array(ends)).all()
    emb = request_embeddings(policy, task, rows, batch_size=3, progress=False)
    alone = request_embeddings(policy, task, rows[4:5], batch_size=1, progress=False)
    assert emb.shape == (10, policy.model.config.hidden_size)
    np.testing.assert_allclose(emb[4], alone[0], atol=1e-5)  # left padding does not change it


def test_alignment_of_hand_built_directions():
    u = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    # u_mean = (2, 4) / 5: cos = [.447, .894, .949, -.447, 0] -> R order: row 2 > 1 > 0 > 4 > 3.
    R = alignment(u)
    assert np.argsort(-R).tolist() == [2, 1, 0, 4, 3] and R[2] == 1.0 and R[3] == 0.0
    unit = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(alignment(unit, total=u.sum(0)), R)  # stored unit rows + raw sum


@pytest.fixture(scope="module")
def double_pool(tiny_sid):
    """A float64 copy of the tiny policy and proxy rollouts that include hits (targets forced in)."""
    task, policy = tiny_sid
    policy = copy.deepcopy(policy).double()
    rows = np.arange(6)
    proxy = proxy_rollouts(policy, task, rows, rollouts=3, requests_per_batch=6, progress=False, seed=0)
    targets = policy.item_responses(task.examples.target[rows])
    proxy.responses[::2, 0, :] = -1
    proxy.responses[::2, 0, : targets.shape[1]] = targets[::2]  # some groups have a hit
    proxy.rewards[::2, 0] = 1.0
    return task, policy, rows, proxy


def test_shared_prompt_hidden_states_equal_the_full_forward(double_pool):
    task, policy, rows, proxy = double_pool
    groups = _Groups.build(policy, task, rows, proxy.responses, proxy.rewards)
    assert len(groups.ids) == len(rows) < len(groups.resp)  # one prompt per request, G rows each
    with torch.no_grad():
        shared = groups.hidden(policy)
        full = groups.hidden(policy, shared_prompt=False)
    assert shared.shape == full.shape and groups.mask.any(dim=1).all()
    torch.testing.assert_close(shared[groups.mask], full[groups.mask], rtol=1e-9, atol=1e-9)


def _request_losses_by_hand(policy, task, rows, proxy):
    """l_i = -(1/G) sum_j A_j / |y_j| sum_t log pi(y_jt) from the model's own logits, under the full
    vocabulary and renormalised over the tree's allowed tokens: ``(full, renormalised)``.

    Group j of request i: its N proxy rollouts, then the target with the hit reward. Each member is
    the plain sequence [prompt; y_j], right-padded (a causal model's earlier positions ignore what
    follows), all in one forward.
    """
    prompts, lengths = task.prompt_tokens(rows)
    seqs, owners = [], []
    for i, row in enumerate(rows):
        prompt = prompts[i, : lengths[i]].tolist()
        for y in [r[r >= 0].tolist() for r in proxy.responses[i]] + [
                list(task.items.sequences[int(task.examples.target[row])])]:
            seqs.append((prompt, y))
            owners.append(i)
    width = max(len(p) + len(y) for p, y in seqs)
    ids = torch.tensor([p + y + [0] * (width - len(p) - len(y)) for p, y in seqs])
    with torch.no_grad():
        logits = policy.model(ids).logits.double()
    out = np.zeros((2, len(rows)))
    for i in range(len(rows)):
        r = np.append(proxy.rewards[i], task.hit_reward)
        adv = (r - r.mean()) / (r.std(ddof=1) + 1e-4)  # A_j, unbiased std as group_advantages
        members = [k for k, owner in enumerate(owners) if owner == i]
        for a, k in zip(adv, members):
            prompt, y = seqs[k]
            sums = np.zeros(2)
            for t, token in enumerate(y):
                z = logits[k, len(prompt) - 1 + t]  # the position before token t predicts it
                _, allowed = task.tree.allowed_tokens([task.tree.walk(y[:t])])
                sums[0] += float(torch.log_softmax(z, dim=0)[token])
                sums[1] += float(torch.log_softmax(z[allowed], dim=0)[list(allowed).index(token)])
            out[:, i] -= a / len(y) * sums / len(members)
    return out


def test_representativeness_loss_uses_the_policys_full_vocabulary(double_pool):
    """l_i (whose H g / gradient is u_i) is the loss the RL update trains: under the default full
    objective log pi is the whole vocabulary's softmax, as the policy's; not the renormalised one."""
    task, policy, rows, proxy = double_pool
    assert policy.objective == "full"
    groups = _Groups.build(policy, task, rows, proxy.responses, proxy.rewards)
    with torch.no_grad():
        got = groups.losses(policy, groups.hidden(policy)).numpy()
    full, renormalised = _request_losses_by_hand(policy, task, rows, proxy)
    assert np.abs(full - renormalised).min() > 5e-3  # the two objectives differ on every request
    # Qwen2's RMSNorm runs in float32 even in a float64 model: agreement to ~1e-7, while the two
    # objectives' losses differ by 1e-2 to 1e-1 here
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-6)
    # objective="constrained" is the documented switch to the renormalised distribution
    constrained = copy.copy(policy)
    constrained.objective = "constrained"
    with torch.no_grad():
        got_c = groups.losses(constrained, groups.hidden(constrained)).numpy()
    np.testing.assert_allclose(got_c, renormalised, rtol=0, atol=1e-6)
    # and so the update directions differ between the two objectives
    u_full = hidden_directions(policy, task, rows, proxy.responses, proxy.rewards)
    u_renormalised = hidden_directions(constrained, task, rows, proxy.responses, proxy.rewards)
    assert (u_full - u_renormalised).norm(dim=1).min() > 1e-3 * u_full.norm(dim=1).max()


def test_hidden_directions_match_finite_differences(double_pool):
    task, policy, rows, proxy = double_pool
    u = hidden_directions(policy, task, rows, proxy.responses, proxy.rewards)
    groups = _Groups.build(policy, task, rows, proxy.responses, proxy.rewards)
    with torch.no_grad():
        h0 = groups.hidden(policy)

    def grad_at(h: torch.Tensor) -> torch.Tensor:
        h = h.clone().requires_grad_(True)
        return torch.autograd.grad(groups.losses(policy, h).sum(), h)[0]

    g0 = grad_at(h0)
    eps = 1e-3  # H g ~ (g(h + eps g) - g(h - eps g)) / (2 eps)
    fd = (grad_at(h0 + eps * g0) - grad_at(h0 - eps * g0)) / (2 * eps)
    fd_u = torch.zeros_like(u).index_add(0, groups.owner, fd.sum(dim=1))
    assert u.abs().max() > 0
    big = fd_u.abs() > 1e-3 * fd_u.abs().max()
    assert torch.equal(torch.sign(u[big]), torch.sign(fd_u[big]))
    torch.testing.assert_close(u, fd_u, rtol=1e-4, atol=1e-9 * float(fd_u.abs().max()))


def test_projected_gradients_match_finite_differences(double_pool):
    task, policy, rows, proxy = double_pool
    projector = GradientProjector(policy, layers=1, d_out=3, d_in=2, seed=0)
    u = projector(policy, task, rows, proxy.responses, proxy.rewards)
    assert u.shape == (len(rows), len(projector.modules) * 3 * 2)
    full = projector(policy, task, rows, proxy.responses, proxy.rewards, shared_prompt=False)
    # equal up to Qwen2's float32 RMSNorm (see below): the shared prompt sums the same terms
    torch.testing.assert_close(u, full, rtol=1e-4, atol=1e-6 * float(full.abs().max()))
    groups = _Groups.build(policy, task, rows, proxy.responses, proxy.rewards)
    eps = 1e-3  # Qwen2's RMSNorm computes in float32 even for a float64 model: no smaller eps
    checked = 0
    for m_index in (0, len(projector.modules) - 1):  # the first and the last Linear of the block
        name, module = projector.modules[m_index]
        for a, b in ((0, 0), (2, 1)):
            # Component (a, b) of layer m is the derivative of l_i along W + eps * P_out[a] P_in[b]^T.
            direction = torch.outer(projector.p_out[name][a], projector.p_in[name][b])
            losses = []
            with torch.no_grad():
                for sign in (1.0, -1.0):
                    module.weight += sign * eps * direction
                    losses.append(groups.losses(policy, groups.hidden(policy, shared_prompt=False)))
                    module.weight -= sign * eps * direction
            fd = (losses[0] - losses[1]) / (2 * eps)
            col = m_index * 6 + a * 2 + b
            assert torch.equal(torch.sign(u[:, col]), torch.sign(fd))
            torch.testing.assert_close(u[:, col], fd, rtol=1e-3, atol=1e-3 * float(fd.abs().max()))
            checked += 1
    assert checked == 4
    # The policy is left as it was: no gradients stored, trainable flags restored.
    assert all(p.grad is None and p.requires_grad for p in policy.parameters())


def test_representativeness_both_variants(double_pool):
    task, policy, rows, proxy = double_pool
    for variant in ("hidden", "params"):
        R = representativeness(policy, task, rows, proxy, variant=variant, batch_size=4, progress=False)
        assert R.shape == (6,) and R.min() == 0.0 and R.max() == 1.0
        again = representativeness(policy, task, rows, proxy, variant=variant, batch_size=6, progress=False)
        np.testing.assert_allclose(R, again, atol=2e-3)  # batching does not matter (float16 storage)
    with pytest.raises(ValueError, match="variant"):
        representativeness(policy, task, rows, proxy, variant="grad")


def _weights(policy):
    return {name: p.detach().clone() for name, p in policy.model.named_parameters()}


def test_train_proxy_trains_a_copy(tiny_sid):
    task, policy = tiny_sid
    start = _weights(policy)
    proxy = train_proxy(policy, task, steps=2, samples=8, pool=np.arange(30), requests_per_step=4,
                        group_size=4, lr=1e-2, seed=0, progress=False)
    assert proxy is not policy and proxy.model is not policy.model
    after = _weights(proxy)
    changed = [name for name in start if not torch.equal(start[name], after[name])]
    assert len(changed) > len(start) // 2  # GRPO steps moved most weights
    assert all(torch.equal(start[name], p) for name, p in _weights(policy).items())  # the caller's is intact
    assert not proxy.model.training
    again = train_proxy(policy, task, steps=2, samples=8, pool=np.arange(30), requests_per_step=4,
                        group_size=4, lr=1e-2, seed=0, progress=False)
    assert all(torch.equal(after[name], p) for name, p in _weights(again).items())  # seeded
    untrained = train_proxy(policy, task, steps=0, progress=False)
    assert untrained is not policy and all(torch.equal(start[n], p) for n, p in _weights(untrained).items())
    with pytest.raises(ValueError, match="steps"):
        train_proxy(policy, task, steps=-1)
    with pytest.raises(ValueError, match="pool rows"):
        train_proxy(policy, task, steps=1, pool=np.array([task.num_requests]))


def _direct_minirec(policy, task, pool, size, seed, group):
    """MiniRec by hand from the module's parts, on ``policy`` as given."""
    proxy = proxy_rollouts(policy, task, pool, rollouts=4, seed=seed, progress=False)
    learn = learnability(proxy.mean_rewards)
    represent = representativeness(policy, task, pool, proxy, seed=seed, progress=False)
    emb = request_embeddings(policy, task, pool, progress=False)
    picks = select("minirec", size, embeddings=emb, learn=learn, represent=represent, seed=seed)
    return curriculum(pool[picks], np.bincount(pool, weights=proxy.mean_rewards, minlength=pool.max() + 1),
                      group)


def test_run_selection_uses_the_trained_proxy(tiny_sid):
    task, policy = tiny_sid
    pool = np.arange(3, 19)  # task rows: order comes back as rows
    start = _weights(policy)
    plain = run_selection(policy, task, pool, "minirec", 8, group=4, seed=1, proxy_steps=0, progress=False)
    order = _direct_minirec(policy, task, pool, 8, seed=1, group=4)
    assert plain["order"] == order.tolist() and plain["config"]["proxy_steps"] == 0
    assert "proxy_training" not in plain["seconds"] and plain["curriculum"]
    settings = {"requests_per_step": 4, "group_size": 4, "lr": 1e-2}
    trained = run_selection(policy, task, pool, "minirec", 8, group=4, seed=1, proxy_steps=2,
                            proxy_samples=8, proxy_settings=settings, progress=False)
    assert all(torch.equal(start[name], p) for name, p in _weights(policy).items())
    proxy = train_proxy(policy, task, steps=2, samples=8, pool=pool, seed=1, progress=False, **settings)
    order_p = _direct_minirec(proxy, task, pool, 8, seed=1, group=4)
    assert trained["order"] == order_p.tolist() and "proxy_training" in trained["seconds"]
    assert order_p.tolist() != order.tolist()  # so the check above tells the proxy from the policy
    # K-center works on the proxy's embeddings too; random needs no policy at all.
    k_plain = run_selection(policy, task, pool, "kcenter", 8, seed=1, proxy_steps=0, progress=False)
    k_proxy = run_selection(policy, task, pool, "kcenter", 8, seed=1, proxy_steps=2, proxy_samples=8,
                            proxy_settings=settings, progress=False)
    emb = request_embeddings(proxy, task, pool, progress=False)
    assert k_proxy["order"] == pool[select("kcenter", 8, embeddings=emb, seed=1)].tolist()
    emb_policy = request_embeddings(policy, task, pool, progress=False)
    assert k_plain["order"] == pool[select("kcenter", 8, embeddings=emb_policy, seed=1)].tolist()
    assert k_plain["order"] != k_proxy["order"]
    rand = run_selection(None, task, pool, "random", 4, seed=1, progress=False)
    assert rand["config"]["proxy_steps"] == 0 and len(rand["order"]) == 4
    with pytest.raises(ValueError, match="needs a proxy policy"):
        run_selection(None, task, pool, "kcenter", 4, progress=False)
