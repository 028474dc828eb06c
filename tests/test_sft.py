import dataclasses
import json

import numpy as np
import pytest
import torch

from agents.baselines import PopularityRecommender
from agents.model.policy import LLMPolicy
from agents.training.evaluate import evaluate, evaluate_ranker
from agents.training.loop import hidden_dropout, warmup_cosine
from agents.training.sft import SequenceObjective, SFTConfig, SFTObjective, sft_objective, train_sft
from recgym.data import Examples, make_synthetic
from recgym.envs import RecGenTask


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(num_items=300, num_users=400, seed=0)
    train = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    valid = RecGenTask(ds, split="valid", tokenizer=train.items)
    test = RecGenTask(ds, split="test", tokenizer=train.items)
    return ds, train, valid, test


@pytest.mark.slow
def test_tiny_model_after_sft_beats_popularity_on_test(data, tmp_path):
    ds, train, valid, test = data
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    cfg = SFTConfig(epochs=3, batch_size=64, lr=5e-3, eval_requests=150, patience=0, progress=False)
    summary = train_sft(policy, train, valid, cfg, run_dir=tmp_path / "run")
    assert summary["best_valid"] > 0
    sft = evaluate(policy, test, beam=20, max_requests=300, progress=False)
    pop = evaluate_ranker(PopularityRecommender().fit(ds.train, 300), ds.test, max_requests=300)
    assert sft["HR@10"] > pop["HR@10"] + 0.1
    # Logs, best weights and checkpoint are on disk.
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records) and any("valid/HR@10" in r for r in records)
    assert (tmp_path / "run" / "best" / "recgym_policy.json").exists()
    assert (tmp_path / "run" / "checkpoint" / "trainer_state.pt").exists()


class Interrupted(Exception):
    """Stands for a kill: raised from inside the loop after a few steps."""


def interrupt_after(monkeypatch, module, name, calls):
    """Make ``module.name`` raise :class:`Interrupted` on its call number ``calls + 1``."""
    real, count = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_resume_continues_exactly(data, tmp_path, monkeypatch):
    import agents.training.sft

    ds, train, valid, _ = data
    cfg = SFTConfig(epochs=1, batch_size=64, max_steps=6, eval_every=3, eval_requests=20, beam=10,
                    progress=False, patience=0)
    straight = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_sft(straight, train, valid, cfg, run_dir=tmp_path / "a")
    # The same run, killed during step 5 (its checkpoint is at step 3), then the same command again.
    with monkeypatch.context() as m:
        interrupt_after(m, agents.training.sft.SFTObjective, "loss", 4)
        with pytest.raises(Interrupted):
            train_sft(LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu"), train, valid, cfg,
                      run_dir=tmp_path / "b")
    state = (tmp_path / "b" / "checkpoint" / "trainer_state.pt")
    assert state.exists() and [r["step"] for r in _records(tmp_path / "b") if "loss" in r] == [1, 2, 3, 4]
    resumed = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_sft(resumed, train, valid, cfg, run_dir=tmp_path / "b")
    steps_a = [r for r in _records(tmp_path / "a") if "loss" in r]
    steps_b = [r for r in _records(tmp_path / "b") if "loss" in r]
    assert [r["step"] for r in steps_b] == [r["step"] for r in steps_a] == [1, 2, 3, 4, 5, 6]  # none twice
    assert steps_a[-1]["loss"] == pytest.approx(steps_b[-1]["loss"], rel=1e-5)
    for p_a, p_b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p_a, p_b)  # the same best weights, bit for bit


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_schedule_and_bad_input(data):
    f = warmup_cosine(5, 50)
    assert f(1) == pytest.approx(0.2) and f(5) == 1.0 and f(50) == pytest.approx(0.1)
    ds, train, _, _ = data
    empty = RecGenTask(ds, split="train", tokenizer=train.items)
    empty.examples = empty.examples.subset(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="no requests"):
        train_sft(LLMPolicy.from_config("tiny", train.items, device="cpu"), empty)


def test_sft_and_rl_optimise_the_same_full_vocabulary_objective():
    """By default SFT's loss is cross-entropy over the whole vocabulary, and RL's log-probs are the same."""
    from agents.learners import make_learner
    from agents.learners.base import RLBatch
    from agents.training.sft import sft_loss

    ds = make_synthetic(num_items=300, num_users=100, seed=0)
    task = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    assert policy.objective == "full"
    rows = np.arange(6)
    with torch.no_grad():
        loss, tokens = sft_loss(policy, task, rows)
        # By hand: log_softmax over all V logits of the LM head at each target token.
        responses = policy.item_responses(task.examples.target[rows])
        ids, lens = task.prompt_tokens(rows)
        total, count = 0.0, 0
        for i in range(len(rows)):
            prompt = ids[i, : lens[i]].tolist()
            target = [t for t in responses[i].tolist() if t >= 0]
            logits = policy.model(torch.tensor([prompt + target])).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for j, token in enumerate(target):
                total -= float(logp[len(prompt) - 1 + j, token])
                count += 1
        assert tokens == count
        assert loss.item() == pytest.approx(total / count, rel=1e-4)
        # RL's teacher-forced log-probs (default GRPO) on the same responses: the same objective.
        grpo = make_learner("grpo", group_size=2)
        left, mask = policy.left_pad(ids, lens)
        batch = RLBatch(prompt_ids=left, prompt_mask=mask, group_index=torch.arange(6),
                        responses=torch.as_tensor(responses), mask=torch.as_tensor(responses >= 0),
                        states=torch.zeros(responses.shape, dtype=torch.long), rewards=torch.zeros(6),
                        hits=torch.zeros(6, dtype=torch.bool), terminal=torch.zeros(6, dtype=torch.long),
                        rows=rows, targets=task.examples.target[rows], chosen=torch.as_tensor(responses),
                        unique=torch.ones(6))
        rl_logp, _ = grpo.logprobs(policy, batch)
        assert -(rl_logp * batch.mask).sum().item() / count == pytest.approx(total / count, rel=1e-4)


# -- sequence level ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compact():
    ds = make_synthetic(num_items=300, num_users=400, seed=0)
    train = RecGenTask(ds, split="train", representation="sid", vocab_size=400, template="compact")
    return ds, train, RecGenTask(ds, split="valid", tokenizer=train.items), RecGenTask(ds, split="test",
                                                                                       tokenizer=train.items)


def _hand_nll(policy, items, requests, alpha=0.0):
    """Sum and count of -log pi(target tokens | compact prompt) over (history, target) requests,
    one request at a time, with the compact prompt written out by hand; with ``alpha``, plus alpha
    times -log(1 - p(c)) for each distinct history item c other than the target, p(c) the probability
    of c's first token where the target's first token is written (unlikelihood)."""
    eos = items.eos_token_id
    total, count = 0.0, 0
    for history, target in requests:
        prompt = [eos] + [t for i in history for t in items.sequences[i].tolist()]
        response = items.sequences[target].tolist()
        logp = torch.log_softmax(policy.model(torch.tensor([prompt + response])).logits[0].double(), dim=-1)
        for j, token in enumerate(response):
            total -= float(logp[len(prompt) - 1 + j, token])
            count += 1
        for c in set(history) - {target} if alpha else ():
            total -= alpha * np.log(1 - float(logp[len(prompt) - 1, items.sequences[c][0]].exp()))
    return total, count


def test_sequence_loss_is_the_mean_of_the_per_prefix_losses_by_hand(compact):
    ds, task, _, _ = compact
    # Two users by hand, max_history 3: windows of 4 items overlapping by one, so user 0's items 4
    # and 5 are learned from [3] and [3, 4] (the second window), the others from every item before.
    seq0, seq1 = [11, 12, 13, 14, 15, 16], [21, 22, 23]
    rows = [(seq0[max(0, t - 3):t], seq0[t], 0) for t in range(1, 6)]
    rows += [(seq1[:t], seq1[t], 1) for t in (1, 2)]
    train = Examples.from_lists([h for h, _, _ in rows], [t for _, t, _ in rows], max_history=3,
                                users=[u for _, _, u in rows])
    hand = RecGenTask(dataclasses.replace(ds, train=train), split="train", tokenizer=task.items)
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    objective = sft_objective(policy, hand)
    assert isinstance(objective, SequenceObjective) and objective.size == 3
    requests = [([11], 12), ([11, 12], 13), ([11, 12, 13], 14), ([14], 15), ([14, 15], 16), ([21], 22),
                ([21, 22], 23)]
    with torch.no_grad():
        loss, tokens = objective.loss(np.arange(objective.size))
        total, count = _hand_nll(policy, task.items, requests)
    assert tokens == count == 7 * 4  # 3 SID codes and the end token per target
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # Sequences that fit one window are exactly the requests: the request-level loss is the same.
    short = RecGenTask(dataclasses.replace(ds, train=train.subset(np.arange(3))), split="train",
                       tokenizer=task.items)
    with torch.no_grad():
        seq_loss, _ = sft_objective(policy, short, "sequence").loss(np.arange(1))
        req_loss, _ = SFTObjective(policy, short).loss(np.arange(3))
    assert seq_loss.item() == pytest.approx(req_loss.item(), rel=1e-5)


def test_sequence_level_under_the_constrained_objective_matches_requests(compact):
    ds, task, _, _ = compact
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu", objective="constrained")
    first = np.flatnonzero(task.examples.user == task.examples.user[0])[:3]  # one user's first rows
    short = RecGenTask(dataclasses.replace(ds, train=task.examples.subset(first)), split="train",
                       tokenizer=task.items)
    with torch.no_grad():
        seq_loss, tokens = sft_objective(policy, short, "sequence").loss(np.arange(1))
        req_loss, req_tokens = SFTObjective(policy, short).loss(np.arange(len(first)))
    assert tokens == req_tokens
    assert seq_loss.item() == pytest.approx(req_loss.item(), rel=1e-5)


def test_stream_writes_windows_as_the_compact_prompt_does(compact):
    _, task, _, _ = compact
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    objective = sft_objective(policy, task)
    rows = np.array([4, 0, 9])
    ids, lengths, states = objective.stream(rows)
    w, eos = objective.windows, task.items.eos_token_id
    for b, r in enumerate(rows):
        items = objective.sequences.items[w.start[r]:w.start[r] + w.length[r]]
        expected = [eos] + [t for i in items for t in task.items.sequences[i].tolist()]
        assert lengths[b] == len(expected) and ids[b, :lengths[b]].tolist() == expected
        scored = states[b] >= 0
        context = 1 + sum(len(task.items.sequences[i]) for i in items[:w.first_target[r]])
        assert not scored[:context].any() and scored[context:lengths[b]].all()
        assert not scored[lengths[b]:].any()


def test_level_follows_the_template_and_is_checked(compact, data):
    _, task, _, _ = compact
    _, instruction, _, _ = data
    assert type(sft_objective(LLMPolicy.from_config("tiny", task.items), task)) is SequenceObjective
    policy = LLMPolicy.from_config("tiny", instruction.items)
    assert type(sft_objective(policy, instruction)) is SFTObjective
    with pytest.raises(ValueError, match="level='sequence' needs a compact template"):
        sft_objective(policy, instruction, "sequence")
    unchained = RecGenTask(task.dataset, split="train", tokenizer=task.items)
    unchained.examples = unchained.examples.subset(np.arange(0, 40, 2)[::-1])  # reversed: rows do not chain
    compact_policy = LLMPolicy.from_config("tiny", task.items)
    assert type(sft_objective(compact_policy, unchained)) is SFTObjective
    with pytest.raises(ValueError, match="split's row .* does not continue"):
        sft_objective(compact_policy, unchained, "sequence")
    with pytest.raises(ValueError, match="level"):
        SFTConfig(level="token")


@pytest.mark.slow
def test_sequence_level_sft_beats_popularity_and_says_so(compact, tmp_path):
    ds, train, valid, test = compact
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    # ~400 users' windows an epoch: batches of 16 give 25 updates an epoch, 375 in all
    cfg = SFTConfig(epochs=15, batch_size=16, lr=5e-3, eval_requests=150, eval_every=125, patience=0,
                    progress=False, dropout=0.1)
    summary = train_sft(policy, train, valid, cfg, run_dir=tmp_path / "run")
    assert summary["level"] == "sequence"
    windows = sft_objective(policy, train).size
    assert windows < train.num_requests and summary["batches_per_epoch"] == -(-windows // 16)
    sft = evaluate(policy, test, beam=20, max_requests=300, progress=False)
    pop = evaluate_ranker(PopularityRecommender().fit(ds.train, 300), ds.test, max_requests=300)
    assert sft["HR@10"] > pop["HR@10"] + 0.1


def test_hidden_dropout_acts_in_training_mode_inside_the_context_only(tiny_sid):
    task, policy = tiny_sid
    ids = torch.as_tensor(task.prompt_tokens(np.arange(2))[0][:, :6])
    with torch.no_grad():
        policy.model.train()
        plain = policy.model(ids).logits
        with hidden_dropout(policy.model, 0.5):
            dropped = [policy.model(ids).logits for _ in range(2)]
            policy.model.eval()
            assert torch.equal(policy.model(ids).logits, plain)  # eval mode: no dropout
            policy.model.train()
        assert not torch.equal(dropped[0], dropped[1]) and not torch.equal(dropped[0], plain)
        assert torch.equal(policy.model(ids).logits, plain)  # hooks gone after the context
    policy.model.eval()
    with pytest.raises(ValueError, match="dropout"):
        SFTConfig(dropout=1.0)


def test_an_early_stopped_run_is_not_trained_further_when_rerun(data, tmp_path, monkeypatch):
    import agents.training.loop
    import agents.training.sft

    _, train, valid, _ = data
    scores = iter([0.5, 0.4, 0.3, 0.2])  # valid NDCG@10 falls after the first validation

    def fake_evaluate(*args, **kwargs):
        return {"NDCG@10": next(scores), "HR@10": 0.0, "requests": 5}

    monkeypatch.setattr(agents.training.loop, "evaluate", fake_evaluate)
    cfg = SFTConfig(epochs=1, batch_size=16, max_steps=6, eval_every=1, eval_requests=5, beam=10,
                    patience=1, progress=False)
    first = train_sft(LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu"), train, valid, cfg,
                      run_dir=tmp_path / "run")
    assert first["steps"] == 2 and first["best_step"] == 1  # stopped by patience, not by max_steps
    interrupt_after(monkeypatch, agents.training.sft.SFTObjective, "loss", 0)  # any training step now fails
    again = train_sft(LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu"), train, valid, cfg,
                      run_dir=tmp_path / "run")
    assert again["steps"] == 2 and again["best_valid"] == 0.5


# -- unlikelihood --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def atomic():
    ds = make_synthetic(num_items=300, num_users=400, seed=0, max_history=3)
    train = RecGenTask(ds, split="train", representation="sid", vocab_size=400, template="compact",
                       sid_index="atomic")
    return ds, train


def test_unlikelihood_loss_is_the_nll_plus_alpha_times_the_history_penalty_by_hand(atomic):
    ds, task = atomic
    # One user, max_history 3: windows of 4 items overlapping by one, [11 12 11 13] and [13 12 14]:
    # targets 12, 11, 13 from the first window, 12 and 14 from [13] and [13 12]. Item 11 repeats in
    # target 13's history (one candidate), and target 11 is an item of its own history (never a
    # candidate of itself).
    seq = [11, 12, 11, 13, 12, 14]
    rows = [(seq[max(0, t - 3):t], seq[t]) for t in range(1, 6)]
    train = Examples.from_lists([h for h, _ in rows], [t for _, t in rows], max_history=3, users=[0] * 5)
    hand = RecGenTask(dataclasses.replace(task.dataset, train=train), split="train", tokenizer=task.items)
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    alpha = 5.0  # the untrained model gives each item p ~ 1/400: a large alpha makes the term visible
    objective = sft_objective(policy, hand, unlikelihood=alpha)
    assert isinstance(objective, SequenceObjective) and objective.size == 2
    requests = [([11], 12), ([11, 12], 11), ([11, 12, 11], 13), ([13], 12), ([13, 12], 14)]
    with torch.no_grad():
        loss, tokens = objective.loss(np.arange(objective.size))
        total, count = _hand_nll(policy, task.items, requests, alpha)
        nll, _ = _hand_nll(policy, task.items, requests)
        plain, _ = sft_objective(policy, hand).loss(np.arange(objective.size))
    assert tokens == count == 5 * 2  # the item's token and the end token per target
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert plain.item() == pytest.approx(nll / count, rel=1e-5) and total > nll + 0.05  # the term is there


def test_unlikelihood_pushes_history_items_down(atomic):
    ds, task = atomic
    # the same start, the same 100 AdamW steps on 4 batches of 16 windows, alpha 0 and 5
    objective = {a: sft_objective(LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu"), task,
                                  unlikelihood=a) for a in (0.0, 5.0)}
    rows = np.arange(64)
    for o in objective.values():
        opt = torch.optim.AdamW(o.policy.model.parameters(), lr=5e-3)
        for step in range(100):
            loss, _ = o.loss(rows[step % 4 * 16:(step % 4 + 1) * 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    # the mean probability of a target's history items where the target is written, after training
    *stream, candidates = objective[5.0]._stream(rows, candidates=True)
    present = candidates >= 0
    mean_p = {}
    with torch.no_grad():
        for a, o in objective.items():
            _, _, cand = o.policy.stream_candidate_logprobs(*stream, candidates)
            mean_p[a] = float(cand.exp().numpy()[present].mean())
    assert present.sum() > 100
    assert mean_p[5.0] < 0.75 * mean_p[0.0]  # measured: .020 against .042


def test_unlikelihood_needs_one_token_per_item_and_sequences(atomic, compact, data):
    _, sid_task, _, _ = compact
    with pytest.raises(ValueError, match="needs one token per item"):
        sft_objective(LLMPolicy.from_config("tiny", sid_task.items), sid_task, unlikelihood=1.0)
    _, task = atomic
    with pytest.raises(ValueError, match="needs sequence-level SFT"):
        sft_objective(LLMPolicy.from_config("tiny", task.items), task, "request", unlikelihood=1.0)
    with pytest.raises(ValueError, match="unlikelihood"):
        SFTConfig(unlikelihood=-1.0)
