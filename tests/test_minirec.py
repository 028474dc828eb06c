import copy

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
    select,
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
    assert learnability(np.full(4, 0.25)).tolist() == [0.0] * 4


def test_greedy_picks_by_hand():
    # Two tight clusters and an outlier; scores favour the first cluster.
    emb = np.array([[0.0, 0.0], [0.0, 0.1], [3.0, 4.0], [6.0, 8.0]])
    scores = np.array([1.0, 0.95, 0.4, 0.3])
    # Pick 0 (top score). Distances to {0}: [0, 0.1, 5, 10] / 10 -> V = [-, 0.0095, 0.2, 0.3]: pick 3.
    # Distances to {0, 3}: [0, 0.1, 5, 0] / 5 -> V = [-, 0.019, 0.4, -]: pick 2, then 1.
    assert greedy_select(emb, scores, 4).tolist() == [0, 3, 2, 1]
    assert select("minirec", 2, embeddings=emb, learn=scores, represent=np.zeros(4)).tolist() == [0, 3]
    # alpha weighs learnability against representativeness.
    represent = np.array([0.0, 0.0, 0.0, 2.0])
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=1.0).tolist() == [3]
    assert select("minirec", 1, embeddings=emb, learn=scores, represent=represent, alpha=5.0).tolist() == [0]


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


def test_curriculum_orders_each_group_easy_to_hard():
    selected = np.array([10, 11, 12, 13, 14])
    r_bar = np.zeros(20)
    r_bar[[10, 11, 12, 13, 14]] = [0.25, 0.75, 0.5, 0.5, 1.0]
    # Groups of 3 in pick order: [10, 11, 12] -> [11, 12, 10]; [13, 14] -> [14, 13].
    assert curriculum(selected, r_bar, group=3).tolist() == [11, 12, 10, 14, 13]
    order = curriculum(selected, r_bar, group=64)
    assert order.tolist() == [14, 11, 12, 13, 10]  # ties (12, 13) keep pick order
    sampler = CurriculumSampler(order, batch_size=2)
    assert [sampler.rows(s).tolist() for s in range(3)] == [[14, 11], [12, 13], [10, 14]]
    stats = describe_subset(selected, r_bar, np.linspace(0, 1, 20))
    assert stats["size"] == 5 and stats["solved_always"] == 0.2


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
