import numpy as np
import pytest
import torch

from agents.model.policy import LLMPolicy, length_buckets, make_rollout_env
from recgym.data import make_synthetic
from recgym.envs import RecGenTask


@pytest.fixture(scope="module", params=["title", "sid"])
def setup(request):
    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    task = RecGenTask(ds, split="train", representation=request.param, vocab_size=400)
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    policy.model.eval()
    return task, policy


def brute_force_scores(policy, task, row):
    """Constrained log-prob of every item for one request, by teacher forcing."""
    n = task.dataset.catalogue.num_items
    prompts, lens = task.prompt_tokens(np.full(n, row))
    with torch.no_grad():
        logp, _, _ = policy.sequence_logprobs(prompts, lens, policy.item_responses(np.arange(n)))
    nodes = np.array([task.tree.walk(s.tolist()) for s in task.items.sequences])
    return dict(zip(nodes.tolist(), logp.sum(dim=1).numpy().tolist()))


def test_samples_and_beams_are_always_catalogue_items(setup):
    task, policy = setup
    envs = make_rollout_env(task, 250)
    gen = torch.Generator().manual_seed(0)
    for seed in range(4):  # 1,000 samples
        ro = policy.rollout(envs, group_size=5, generator=gen, seed=seed, temperature=1.5)
        assert (ro.terminal >= 0).all()
        for node in ro.terminal.tolist():
            assert len(task.tree.items(node)) >= 1
    prompts, lens = task.prompt_tokens(np.arange(50))
    terminals, scores = policy.beam_search(prompts, lens, width=20)  # 1,000 beam items
    assert (terminals >= 0).all() and np.isfinite(scores).all()
    assert all(task.tree.is_complete(terminals.reshape(-1)))
    assert all(len(set(row)) == 20 for row in terminals.tolist())  # distinct items per request
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_beam_search_returns_exactly_the_k_most_probable_items(setup):
    task, policy = setup
    prompts, lens = task.prompt_tokens(np.arange(3))
    terminals, scores = policy.beam_search(prompts, lens, width=64, k=10)
    for row in range(3):
        brute = sorted(brute_force_scores(policy, task, row).items(), key=lambda kv: -kv[1])[:10]
        assert terminals[row].tolist() == [node for node, _ in brute]
        np.testing.assert_allclose(scores[row], [s for _, s in brute], atol=1e-4)


def test_beam_search_with_excluded_items_returns_the_most_probable_others(setup):
    task, policy = setup
    prompts, lens = task.prompt_tokens(np.arange(3))
    n = task.dataset.catalogue.num_items
    excluded = []
    for row in range(3):  # each request excludes its 6 best items and its history
        best = sorted(brute_force_scores(policy, task, row).items(), key=lambda kv: -kv[1])[:6]
        items = [int(i) for node, _ in best for i in task.tree.items(node)]
        excluded.append(items + task.examples.history[row, : task.examples.history_len[row]].tolist())
    width = max(map(len, excluded))
    padded = np.array([e + [-1] * (width - len(e)) for e in excluded])
    terminals, scores = policy.beam_search(prompts, lens, width=64, k=10, exclude_items=padded)
    for row in range(3):
        gone = set(excluded[row])
        brute = sorted(((node, s) for node, s in brute_force_scores(policy, task, row).items()
                        if not set(task.tree.items(node).tolist()) <= gone), key=lambda kv: -kv[1])[:10]
        assert terminals[row].tolist() == [node for node, _ in brute]
        np.testing.assert_allclose(scores[row], [s for _, s in brute], atol=1e-4)
    # every item excluded: nothing is found, under either scoring, and nothing is NaN
    everything = np.tile(np.arange(n), (3, 1))
    for scoring in ("full", "constrained"):
        terminals, scores = policy.beam_search(prompts, lens, width=8, exclude_items=everything,
                                               scoring=scoring)
        assert (terminals == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError, match="exclude_items must be"):
        policy.beam_search(prompts, lens, width=8, exclude_items=everything[:2])


def test_rollout_logprobs_equal_teacher_forced_logprobs(setup):
    task, policy = setup
    envs = make_rollout_env(task, 12)
    ro = policy.rollout(envs, group_size=4, generator=torch.Generator().manual_seed(1), seed=3)
    assert (ro.rows[:4] == ro.rows[0]).all()
    prompts, lens = task.prompt_tokens(ro.rows)
    responses = np.where(ro.mask.numpy(), ro.tokens.numpy(), -1)
    with torch.no_grad():  # rollouts record the sampling distribution: renormalised over allowed tokens
        logp, entropy, mask = policy.sequence_logprobs(prompts, lens, responses, full_vocab=False)
    torch.testing.assert_close(logp, ro.logprobs, atol=1e-5, rtol=0)
    assert (mask == ro.mask).all() and (entropy[mask] >= -1e-6).all()
    # The env's rewards are hits on the sampled items.
    for i in range(12):
        assert ro.rewards[i].item() == float(ro.targets[i] in task.tree.items(int(ro.terminal[i])))


def test_sparse_head_equals_the_full_softmax_restricted_to_allowed_tokens(setup):
    task, policy = setup
    hidden = torch.randn(5, policy.model.config.hidden_size)
    states = torch.as_tensor([0, 0, 1, 2, 3])
    states = torch.where(policy.tables.is_complete(states), torch.zeros_like(states), states)
    tokens, logits = policy.allowed_logits(hidden, states)
    full = policy.model.lm_head(hidden)  # all vocabulary logits
    for i in range(5):
        valid = tokens[i] >= 0
        expect = torch.log_softmax(full[i, tokens[i][valid]], dim=0)
        torch.testing.assert_close(torch.log_softmax(logits[i][valid], dim=0), expect, atol=1e-5, rtol=0)


def test_sampling_is_reproducible_and_top_k_restricts(setup):
    task, policy = setup
    envs = make_rollout_env(task, 8)
    a = policy.rollout(envs, generator=torch.Generator().manual_seed(5), seed=1)
    b = policy.rollout(envs, generator=torch.Generator().manual_seed(5), seed=1)
    assert torch.equal(a.tokens, b.tokens)
    greedy = policy.rollout(envs, top_k=1, rows=np.zeros(8, np.int64), seed=0,
                            generator=torch.Generator().manual_seed(0))
    assert (greedy.tokens == greedy.tokens[0]).all() and (greedy.logprobs == 0).all()


def test_save_and_load_round_trip(setup, tmp_path):
    task, policy = setup
    policy.save_pretrained(tmp_path / "p")
    back = LLMPolicy.from_pretrained(tmp_path / "p", device="cpu")
    assert back.items.representation == task.representation
    assert back.tree.num_nodes == task.tree.num_nodes
    prompts, lens = task.prompt_tokens(np.arange(2))
    np.testing.assert_array_equal(back.beam_search(prompts, lens, width=5)[0],
                                  policy.beam_search(prompts, lens, width=5)[0])


def test_bad_arguments(setup):
    task, policy = setup
    with pytest.raises(ValueError, match="width"):
        policy.beam_search(*task.prompt_tokens(np.arange(1)), width=5, k=10)
    from recgym.envs.vector import RecGenVectorEnv

    with pytest.raises(ValueError, match="disabled"):
        policy.rollout(RecGenVectorEnv(2, task))


@pytest.mark.parametrize("full_vocab", [False, True])
def test_shared_prompt_logprobs_equal_full_recompute_with_gradients(setup, full_vocab):
    """group_logprobs (one prompt forward per request) == sequence_logprobs (one per row)."""
    task, policy = setup
    envs = make_rollout_env(task, 12)
    ro = policy.rollout(envs, group_size=4, generator=torch.Generator().manual_seed(2), seed=5)
    responses = torch.where(ro.mask, ro.tokens, -1)
    # Some rows of group 0 replaced by other (longer / shorter) items: mixed lengths in a group.
    responses = torch.nn.functional.pad(responses, (0, 4), value=-1)
    items = policy.item_responses([0, 7])
    responses[1] = -1
    responses[1, : items.shape[1]] = torch.as_tensor(items[0])
    index = np.repeat(np.arange(3), 4)

    def run(fn):
        policy.model.zero_grad()
        logp, ent, mask = fn()
        (logp.sum() + 0.3 * ent.sum()).backward()
        return logp.detach(), ent.detach(), mask, [p.grad.clone() for p in policy.model.parameters()]

    shared = run(lambda: policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses, index,
                                               full_vocab=full_vocab))
    prompts, lens = task.prompt_tokens(ro.rows)
    full = run(lambda: policy.sequence_logprobs(prompts, lens, responses, full_vocab=full_vocab))
    assert torch.equal(shared[2], full[2])
    torch.testing.assert_close(shared[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1], full[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(shared[3], full[3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    if not full_vocab:  # and both equal the sampling-time log-probs
        torch.testing.assert_close(shared[0][[0, 2, 3], : ro.tokens.shape[1]], ro.logprobs[[0, 2, 3]],
                                   atol=1e-5, rtol=1e-5)
    else:  # the full-vocabulary distribution gives lower log-probs than the constrained one
        constrained = policy.sequence_logprobs(prompts, lens, responses, full_vocab=False)[0].detach()
        assert (shared[0] <= constrained + 1e-6).all() and (shared[0] < constrained - 1e-3).any()


def test_length_buckets_partition_rows_and_bound_the_padding():
    # Hand-computed, max padding 0.1: longest first 10, 9 (19 real of 20 padded); adding 4 gives
    # 23 real of 30 (23% padding): a new bucket; 4, 3 would be 7 of 8 (12.5%): apart again.
    assert [b.tolist() for b in length_buckets([10, 3, 9, 4], 0.1)] == [[0, 2], [3], [1]]
    assert [b.tolist() for b in length_buckets([10, 3, 9, 4], 0.25)] == [[0, 2, 3], [1]]
    assert [b.tolist() for b in length_buckets([5, 5, 2, 2], 0.0)] == [[0, 1], [2, 3]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 52, size=200)
    buckets = length_buckets(lengths, 0.1)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(200))
    for rows in buckets:
        assert lengths[rows].sum() >= 0.9 * len(rows) * lengths[rows].max()
    assert 1 < len(buckets) < 20
    with pytest.raises(ValueError, match="max_padding"):
        length_buckets(lengths, 1.0)


@pytest.mark.parametrize("method", ["group", "sequence"])
def test_length_buckets_give_the_same_logprobs_and_gradients(setup, method):
    """Teacher forcing bucket by bucket (every distinct length apart) == the whole batch padded."""
    task, policy = setup
    envs = make_rollout_env(task, 16)
    ro = policy.rollout(envs, group_size=4, generator=torch.Generator().manual_seed(4), seed=7)
    responses = torch.where(ro.mask, ro.tokens, -1)
    responses[[1, 6]] = -1  # two short responses (one token; the rest padding)
    responses[[1, 6], 0] = ro.tokens[[1, 6], 0]
    prompts, lens = task.prompt_tokens(ro.rows)
    index = np.repeat(np.arange(4), 4)

    def run(padding):
        policy.bucket_padding = padding
        policy.model.zero_grad()
        if method == "group":
            logp, ent, _ = policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses, index)
        else:
            logp, ent, _ = policy.sequence_logprobs(prompts, lens, responses)
        (logp.sum() + 0.3 * ent.sum()).backward()
        return logp.detach(), ent.detach(), [p.grad.clone() for p in policy.model.parameters()]

    before = policy.bucket_padding
    try:
        whole, bucketed = run(None), run(0.0)
    finally:
        policy.bucket_padding = before
    assert len(length_buckets((responses >= 0).sum(dim=1).numpy(), 0.0)) > 1  # the buckets really split
    torch.testing.assert_close(bucketed[0], whole[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bucketed[1], whole[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(bucketed[2], whole[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize("full_vocab", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_without_entropy_equal_the_log_softmax_with_its_gradients(setup, full_vocab, temperature):
    """entropy=False takes z_y - logsumexp(z) (no (N, K) log-softmax): the same log-probs and gradients
    as the log-softmax path, whose numbers equal the sampling-time log-probs (tests above)."""
    task, policy = setup
    prompts, lens = task.prompt_tokens(np.arange(6))
    responses = policy.item_responses([0, 5, 9, 17, 33, 59])

    def run(entropy):
        policy.model.zero_grad()
        logp, ent, mask = policy.sequence_logprobs(prompts, lens, responses, temperature,
                                                   full_vocab=full_vocab, entropy=entropy)
        (logp * torch.arange(1.0, logp.shape[1] + 1)).sum().backward()  # unequal weights per position
        return logp.detach(), ent, mask, [p.grad.clone() for p in policy.model.parameters()]

    fast, slow = run(False), run(True)
    assert fast[1] is None and slow[1] is not None
    assert torch.equal(fast[2], slow[2]) and (fast[0] <= 0).all()
    torch.testing.assert_close(fast[0], slow[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(fast[3], slow[3]):  # float32 rounding of sums over ~30 weighted positions
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()) + 1e-6, rtol=1e-4)


def test_logprobs_without_entropy_with_one_token_per_item():
    """One token per item (an item is <a_i> and the end token): the same log-probs as the log-softmax
    path, where the root's union is the whole catalogue."""
    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    task = RecGenTask(ds, split="train", representation="sid", sid_index="atomic")
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    prompts, lens = task.prompt_tokens(np.arange(5))
    responses = policy.item_responses([0, 4, 8, 30, 59])
    for full_vocab in (True, False):
        fast = policy.sequence_logprobs(prompts, lens, responses, full_vocab=full_vocab, entropy=False)[0]
        slow = policy.sequence_logprobs(prompts, lens, responses, full_vocab=full_vocab)[0]
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # the constrained normaliser is over the 60 item tokens only: log p >= the full-vocabulary one
    assert (fast[:, 0] > policy.sequence_logprobs(prompts, lens, responses, full_vocab=True)[0][:, 0]).all()


def test_untied_output_embeddings_train_apart_and_survive_saving(tmp_path):
    from agents.configs import MODEL_PRESETS

    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    task = RecGenTask(ds, split="train", representation="sid", sid_index="atomic")
    tied = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    assert tied.head_weight is tied.model.get_input_embeddings().weight
    untied = {**MODEL_PRESETS["tiny"], "tie_word_embeddings": False}
    policy = LLMPolicy.from_config(untied, task.items, seed=0, device="cpu")
    head, embed = policy.head_weight, policy.model.get_input_embeddings().weight
    assert head is not embed and not policy.model.config.tie_word_embeddings
    prompts, lens = task.prompt_tokens(np.arange(4))
    seen = set(task.examples.history[:4].reshape(-1).tolist())
    targets = [i for i in range(60) if i not in seen][:4]  # items in none of the 4 prompts
    embed_before, head_before = embed.detach().clone(), head.detach().clone()
    logp = policy.sequence_logprobs(prompts, lens, policy.item_responses(targets), entropy=False)[0]
    torch.optim.SGD(policy.model.parameters(), lr=1.0).zero_grad()
    (-logp.sum()).backward()
    with torch.no_grad():
        for p in policy.model.parameters():
            if p.grad is not None:
                p -= p.grad
    # Items in neither the prompts nor the responses: the softmax's normaliser moved their output
    # rows, while nothing fed their input rows (tied, they would be one tensor and move together).
    others = [i for i in range(60) if i not in seen and i not in targets]
    rows = torch.as_tensor([r[0] for r in policy.item_responses(others)])
    assert not torch.equal(head[rows], head_before[rows])
    assert torch.equal(embed[rows], embed_before[rows])
    policy.save_pretrained(tmp_path / "p")
    back = LLMPolicy.from_pretrained(tmp_path / "p", device="cpu")
    assert not back.model.config.tie_word_embeddings
    torch.testing.assert_close(back.head_weight, head)
    torch.testing.assert_close(back.model.get_input_embeddings().weight, embed)
