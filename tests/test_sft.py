import json

import numpy as np
import pytest

from agents.baselines import PopularityRecommender
from agents.evaluate import evaluate, evaluate_ranker
from agents.policy import LLMPolicy
from agents.sft import SFTConfig, train_sft
from agents.training import warmup_cosine
from recgym.data import make_synthetic
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


def test_resume_continues_exactly(data, tmp_path):
    ds, train, valid, _ = data
    cfg = SFTConfig(epochs=1, batch_size=64, max_steps=6, eval_every=3, eval_requests=20, beam=10,
                    progress=False, patience=0)
    straight = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_sft(straight, train, valid, cfg, run_dir=tmp_path / "a")
    # Same run, interrupted after 3 steps, then resumed from its checkpoint.
    first = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
    train_sft(first, train, valid, SFTConfig(**{**cfg.__dict__, "max_steps": 3}), run_dir=tmp_path / "b")
    state = (tmp_path / "b" / "checkpoint" / "trainer_state.pt")
    assert state.exists()
    resumed = LLMPolicy.from_config("tiny", train.items, seed=5, device="cpu")  # weights come from disk
    train_sft(resumed, train, valid, cfg, run_dir=tmp_path / "b")
    last_a = [r for r in _records(tmp_path / "a") if "loss" in r][-1]
    last_b = [r for r in _records(tmp_path / "b") if "loss" in r][-1]
    assert last_a["step"] == last_b["step"] == 6
    assert last_a["loss"] == pytest.approx(last_b["loss"], rel=1e-5)


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
