import json

import numpy as np
import pytest
import torch

from agents.learners import (
    Learner,
    RLBatch,
    first_in_group,
    learner_names,
    make_learner,
    register_learner,
    unregister_learner,
)
from agents.learners.riser import RISER, RISERConfig
from agents.model.policy import LLMPolicy, make_rollout_env
from agents.training.rl import EpochSampler, RLConfig, train_rl
from agents.training.sft import SFTConfig, train_sft
from recgym.data import make_synthetic
from recgym.envs import RecGenTask


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(num_items=300, num_users=400, seed=0)
    train = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    valid = RecGenTask(ds, split="valid", tokenizer=train.items)
    return ds, train, valid


def test_epoch_sampler_covers_every_row_once_per_epoch():
    s = EpochSampler(np.arange(100, 110), batch_size=3, seed=4)
    seen = np.concatenate([s.rows(step) for step in range(10)])  # 30 rows = 3 epochs
    for epoch in range(3):
        assert sorted(seen[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(100, 110))
    assert (s.rows(7) == EpochSampler(np.arange(100, 110), 3, seed=4).rows(7)).all()  # pure function
    with pytest.raises(ValueError, match="empty"):
        EpochSampler(np.zeros(0, np.int64), 3)


def test_first_in_group():
    terminal = torch.tensor([9, 9, 3, 9, 3, 3, 5, 5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert first_in_group(terminal, groups).tolist() == [True, False, True, False, True, False, True, False]


def test_batch_split_keeps_groups_whole(data):
    _, train, _ = data
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    learner = make_learner("grpo", group_size=4)
    envs = make_rollout_env(train, 5 * 4)
    batch = learner.collect(policy, envs, np.arange(5), generator=torch.Generator().manual_seed(0), seed=0)
    parts = batch.split(2)
    assert [p.num_groups for p in parts] == [3, 2]
    assert torch.equal(torch.cat([p.rewards for p in parts]), batch.rewards)
    assert np.array_equal(np.concatenate([p.rows for p in parts]), batch.rows)
    second = parts[1]
    assert second.group_index.tolist() == [0] * 4 + [1] * 4
    assert torch.equal(second.prompt_ids, batch.prompt_ids[3:])
    width = second.responses.shape[1]
    assert torch.equal(second.responses, batch.responses[12:, :width])
    with pytest.raises(ValueError, match="unknown learner"):
        make_learner("ppo")
    with pytest.raises(ValueError, match="unknown setting"):
        make_learner("grpo", oversample=4)


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly_and_logs_everything(data, tmp_path, monkeypatch):
    import agents.training.rl

    _, train, valid = data
    cfg = RLConfig(steps=4, requests_per_step=4, eval_every=2, eval_requests=20, beam=10, minibatches=2,
                   mu=2, lr=1e-3, progress=False)
    learner = make_learner("riser", group_size=4, oversample=6, beta=0.05)
    straight = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_rl(straight, learner, train, valid, cfg, run_dir=tmp_path / "a")
    # The same run, killed during step 4 (its checkpoint is at step 2, step 3 is logged), then rerun.
    with monkeypatch.context() as m:
        interrupted = [0]
        real = agents.training.rl._train_step

        def killed_at_step_4(*args, **kwargs):
            interrupted[0] += 1
            if interrupted[0] == 4:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        m.setattr(agents.training.rl, "_train_step", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            train_rl(LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu"), learner, train, valid,
                     cfg, run_dir=tmp_path / "b")
    assert [r["step"] for r in _records(tmp_path / "b") if "loss" in r] == [1, 2, 3]
    resumed = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_rl(resumed, learner, train, valid, cfg, run_dir=tmp_path / "b")
    steps_a = [r for r in _records(tmp_path / "a") if "loss" in r]
    steps_b = [r for r in _records(tmp_path / "b") if "loss" in r]
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b] == [1, 2, 3, 4]  # step 3 once
    for key in ("loss", "hit_rate", "entropy", "kl", "clip_frac", "simpo_loss"):
        assert steps_a[-1][key] == pytest.approx(steps_b[-1][key], rel=1e-5, abs=1e-7), key
    record = steps_a[-1]
    for key in ("reward_mean", "hit_rate", "zero_adv_frac", "unique_per_group", "entropy", "clip_frac",
                "kl", "simpo_loss", "simpo_margin", "tokens_per_s", "grad_norm", "lr", "rollouts"):
        assert key in record, key
    assert record["rollouts"] == 4 * 4 * 6
    assert (tmp_path / "a" / "reference" / "model.safetensors").exists()  # beta > 0 keeps a reference
    assert (tmp_path / "a" / "best" / "recgym_policy.json").exists()
    assert any("valid/HR@10" in r and r["step"] == 0 for r in _records(tmp_path / "a"))


def test_a_plugged_in_learner_trains_through_the_same_loop(data):
    _, train, _ = data

    class Reinforce(Learner):
        name = "reinforce"

        def make_batch(self, policy, rollout):
            batch = RLBatch.from_rollout(policy, rollout, np.arange(len(rollout.rows)), rollout.group_size)
            batch.advantages = batch.rewards - batch.rewards.mean()
            return batch

        def loss(self, policy, batch):
            logp, _ = self.logprobs(policy, batch)
            return -(batch.advantages[:, None] * logp * batch.mask).sum() / batch.mask.sum(), {}

    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    summary = train_rl(policy, Reinforce(), train, None, RLConfig(steps=2, requests_per_step=3,
                                                                    progress=False))
    assert summary["steps"] == 2 and summary["rollouts"] == 2 * 3 * 4


def test_registered_learners_are_built_by_name_and_checked():
    register_learner("not-a-learner", lambda **settings: settings)
    try:
        assert learner_names()[-1] == "not-a-learner"
        with pytest.raises(TypeError, match="returned dict, not a Learner"):
            make_learner("not-a-learner", group_size=4)
    finally:
        unregister_learner("not-a-learner")
    assert "not-a-learner" not in learner_names()
    with pytest.raises(ValueError, match="unknown learner 'not-a-learner': choose one of"):
        make_learner("not-a-learner")
    for bad in ("", "a b", "x.y"):
        with pytest.raises(ValueError, match="learner names"):
            register_learner(bad, lambda **settings: settings)
    with pytest.raises(TypeError, match="callable"):
        register_learner("fine", 3)


@pytest.mark.slow
def test_grpo_and_riser_raise_valid_hr10_above_the_sft_start(data, tmp_path):
    _, train, valid = data
    start = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_sft(start, train, None, SFTConfig(epochs=1, batch_size=64, lr=5e-3, max_steps=25, progress=False))
    start.save_pretrained(tmp_path / "sft")
    # RISER at 3e-4 (its old setting here) overshoots under the full objective; at 1e-4 it climbs.
    for name, lr, steps in (("grpo", 1e-4, 100), ("riser", 1e-4, 60)):
        policy = LLMPolicy.from_pretrained(tmp_path / "sft", device="cpu")
        cfg = RLConfig(steps=steps, lr=lr, eval_every=steps // 2, eval_requests=None, progress=False)
        summary = train_rl(policy, make_learner(name), train, valid, cfg)
        history = [h[cfg.metric] for h in summary["valid_history"]]
        assert summary["best_valid"] > history[0], (name, history)


def test_first_minibatch_of_a_step_has_rho_exactly_one(data, monkeypatch):
    """log pi_old comes minibatch by minibatch, as the loss computes log pi: before the first update of
    a step |log pi - log pi_old| is 0 exactly, so float noise cannot pick the sign of KL-Cov's gradient
    (with log pi_old from one forward of the whole batch it was ~5e-7 here)."""
    import agents.learners.riser as riser_module

    _, train, _ = data
    seen, penalty = [], riser_module.kl_cov_penalty

    def record(logp, old_logp, *args):
        seen.append(float((logp.detach() - old_logp).abs().max()))
        return penalty(logp, old_logp, *args)

    monkeypatch.setattr(riser_module, "kl_cov_penalty", record)
    policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    learner = RISER(RISERConfig(group_size=4, oversample=6, kl_cov_k=0.1))
    cfg = RLConfig(steps=2, requests_per_step=5, minibatches=2, lr=1e-2, warmup_steps=0, progress=False)
    train_rl(policy, learner, train, None, cfg)
    assert len(seen) == 4  # 2 steps x 2 minibatches
    assert seen[0] == 0 and seen[2] == 0, seen  # each step's first minibatch: pi = pi_old
    assert seen[1] > 0 and seen[3] > 0, seen  # after an update: the policy moved
