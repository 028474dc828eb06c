"""agents.parallel.distributed and the sharded loops, with 2 gloo processes launched as torchrun launches
them.

The 2-process scenarios live at the bottom of this file (``python tests/test_distributed.py
SCENARIO OUT``); the tests launch them with ``python -m torch.distributed.run --standalone
--nproc-per-node 2`` (or, for the failure rule, as two plain processes with torchrun's variables,
so that no launcher kills a rank for us) and compare what every rank wrote with one process's
numbers computed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agents.parallel import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
EVAL_ROWS, EVAL_BATCH, EVAL_BEAM = 37, 8, 10  # 5 batches: rank 0 searches 3, rank 1 searches 2


# -- one process: the helpers ---------------------------------------------------------------------


def test_shards_partition_in_rank_order():
    for n in (0, 1, 5, 8, 37):
        for w in (1, 2, 3, 8):
            parts = [np.arange(n)[dist.shard_slice(n, r, w)] for r in range(w)]
            assert np.concatenate(parts).tolist() == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [dist.shard_slice(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]


def test_minibatch_shards_rebuild_one_process_minibatches():
    # 10 groups, 3 minibatches as one process splits them: [0..3], [4..6], [7..9]; 2 ranks.
    r0 = [p.tolist() for p in dist.minibatch_shards(10, 3, 0, 2)]
    r1 = [p.tolist() for p in dist.minibatch_shards(10, 3, 1, 2)]
    assert r0 == [[0, 1], [4, 5], [7, 8]] and r1 == [[2, 3], [6], [9]]
    assert dist.minibatch_shards(10, 3, 0, 1)[1].tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="requests-per-step"):
        dist.minibatch_shards(6, 4, 0, 2)  # a minibatch of one request cannot feed two ranks


def test_rank_seed_rule():
    assert dist.rank_seed(1234, 0) == 1234  # rank 0 of any world: the single-process seed
    seeds = {dist.rank_seed(1234, r) for r in range(8)}
    assert len(seeds) == 8
    assert dist.rank_seed(1234, 3) == int(np.random.SeedSequence([1234, 3]).generate_state(1)[0])


def test_launch_variables_are_checked():
    env = {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        dist.launch_env(env)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        dist.launch_env({"RANK": "0", "WORLD_SIZE": "2"})
    assert dist.launch_env({"WORLD_SIZE": "1"}) == (0, 1, 0)


def test_single_process_helpers_are_the_identity():
    assert dist.init().world_size == 1 and not dist.is_distributed()
    with dist.loss_sync():
        assert dist.global_sum(3) == 3 and not dist.syncing()
    hits = np.array([[True, False], [False, False]])
    assert dist.gather_rows(hits) is hits
    with pytest.raises(KeyError), dist.agree("arguments"):
        raise KeyError("x")  # a plain block: the error itself


# -- two processes ------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", **extra)
    return env


GLOO_ABORT = "terminate called without an active exception"


def run_job(cmd: list[str], out: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` of a torchrun job, run a second time if a rank died in gloo's C++ alone.

    On this 2-core CI machine, with other jobs running, a rank has once aborted with
    ``std::terminate`` inside the gloo backend (no Python error, no recgym message: SIGABRT with
    GLOO_ABORT on stderr) while the same job passed on every rerun. That crash is retried once, after
    removing what the job wrote to ``out``; any other failure, and the same crash twice, fails the test.
    """
    before = set(out.iterdir())
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    crashed = done.returncode != 0 and GLOO_ABORT in done.stderr
    if crashed and "Traceback" not in done.stderr.split(GLOO_ABORT)[0]:  # no Python error came first
        warnings.warn(f"a rank aborted in gloo ({GLOO_ABORT!r}); running the job again", stacklevel=2)
        for path in set(out.iterdir()) - before:  # what the job wrote; the test's own inputs stay
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return done


def torchrun(scenario: str, out: Path, timeout: float = 150, **env: str) -> None:
    """Run a scenario in 2 gloo processes under torchrun; fail with their output if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), scenario, str(out)]
    done = run_job(cmd, out, env=_env(**env), timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def two_plain_processes(scenario: str, out: Path, timeout: float = 90) -> list[subprocess.CompletedProcess]:
    """Two processes with torchrun's variables but no launcher: no agent stops a rank for us."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), scenario, str(out)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), RECGYM_DIST_TIMEOUT="60"))
        for r in range(2)]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)  # a hang fails the test here
            results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def eval_setup():
    from agents.model.policy import LLMPolicy
    from recgym.envs import RecGenTask

    task = RecGenTask("synthetic", split="test", representation="sid", vocab_size=400,
                      dataset_kwargs={"num_items": 300, "num_users": 200})
    return task, LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One torchrun launch of the 'train' scenario (evaluation, SFT and RL on 2 ranks)."""
    out = tmp_path_factory.mktemp("two-ranks")
    torchrun("train", out)
    return out


def test_sharded_evaluation_equals_one_process(two_rank_run):
    from agents.training.evaluate import evaluate, request_hits, select_rows

    torch.set_num_threads(1)
    task, policy = eval_setup()
    rows = select_rows(task.num_requests, EVAL_ROWS, seed=0)
    hits, missing = request_hits(policy, task, rows, beam=EVAL_BEAM, k=EVAL_BEAM, batch_size=EVAL_BATCH,
                                 progress=False)
    metrics = evaluate(policy, task, beam=EVAL_BEAM, batch_size=EVAL_BATCH, max_requests=EVAL_ROWS,
                       progress=False)
    assert hits.any() and not hits.all()  # a comparison that can tell requests apart
    for r in range(2):
        got = np.load(two_rank_run / f"eval-rank{r}.npz")
        np.testing.assert_array_equal(got["hits"], hits)  # every rank holds every request, in order
        assert int(got["missing"]) == missing
        assert json.loads((two_rank_run / f"eval-rank{r}.json").read_text()) == metrics
    searched = [int(np.load(two_rank_run / f"eval-rank{r}.npz")["searched"]) for r in range(2)]
    assert searched == [24, 13]  # each rank searched only its own batches: 3 x 8 and 8 + 5


def test_a_failure_on_one_rank_stops_every_rank(tmp_path):
    results = two_plain_processes("failures", tmp_path)
    # At a sync point (argument checks): the failing rank raises its own error, the other names it.
    said = [(tmp_path / f"failure-rank{r}.txt").read_text() for r in range(2)]
    assert said[1].startswith("ConfigError: lr=nan")
    assert said[0].startswith("DistributedError: arguments failed on 1 of 2 ranks")
    assert "rank 1: ConfigError: lr=nan" in said[0]
    # Outside a sync point: rank 1 raises while rank 0 waits in a collective; rank 0 is told at once
    # (its 60 s process-group timeout would fail the same way, but this test's 90 s limit
    # catches a hang), and both exit non-zero.
    assert [r.returncode for r in results] == [1, 1], [r.stderr[-2000:] for r in results]
    assert "RuntimeError: rank 1 crashed" in results[1].stderr
    assert "recgym: rank 1 of 2 failed" in results[1].stderr
    assert "DistributedError: rank 0: the collective" in results[0].stderr


SFT_CONFIG = {"batch_size": 9, "max_steps": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 2,
              "eval_requests": 24, "beam": 10, "patience": 0, "progress": False}
# max |w_2 ranks - w_1 process| in float32 after the steps: summation order only, but AdamW divides by
# sqrt(v), which magnifies the float32 noise of near-zero gradient components (1.5e-5 seen on one CPU,
# below 1e-5 on another); a wrong step moves weights by ~lr = 3e-3 (the check below asserts > 1e-3).
WEIGHT_TOL = 1e-4


def sft_setup(seed: int = 0, padded: bool = False):
    """Synthetic train / valid tasks and a tiny policy; ``padded``: one padded batch per forward, no
    length buckets (as a loss under FSDP runs, so that the FSDP scenarios' reference runs alike)."""
    from agents.model.policy import LLMPolicy
    from recgym.envs import RecGenTask

    kwargs = {"num_items": 300, "num_users": 200}
    train = RecGenTask("synthetic", split="train", representation="sid", vocab_size=400,
                       dataset_kwargs=kwargs)
    valid = RecGenTask("synthetic", split="valid", tokenizer=train.items, dataset_kwargs=kwargs)
    policy = LLMPolicy.from_config("tiny", train.items, seed=seed, device="cpu")
    if padded:
        policy.bucket_padding = None
    return train, valid, policy


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_rank_sft_takes_one_process_steps(tmp_path):
    """4 steps of 9 rows (shards of 5 + 4) with validation every 2 steps on 2 ranks = one process."""
    from agents.training.checkpoint import load_trainer_state
    from agents.training.sft import SFTConfig, train_sft
    from agents.training.tracking import MetricLogger

    torchrun("sft", tmp_path)
    torch.set_num_threads(1)
    train, valid, policy = sft_setup()
    start = {k: v.clone() for k, v in policy.model.state_dict().items()}
    one = train_sft(policy, train, valid, SFTConfig(**SFT_CONFIG), run_dir=tmp_path / "one")
    want = policy.model.state_dict()
    assert max_weight_diff(start, want) > 1e-3  # the steps moved the weights: a comparison that can fail
    for r in range(2):  # rank 1 started from other weights (seed 1): broadcast_parameters fixed that
        got = torch.load(tmp_path / f"sft-rank{r}.pt")
        diff = max_weight_diff(got, want)
        assert diff < WEIGHT_TOL, (r, diff)
        summary = json.loads((tmp_path / f"sft-rank{r}.json").read_text())
        assert summary["steps"] == one["steps"] == 4 and summary["best_step"] == one["best_step"]
        assert summary["valid_history"] == one["valid_history"]  # every rank validated on all requests
    two = MetricLogger.read(tmp_path / "run")  # written by rank 0 alone: each step once
    ref = MetricLogger.read(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in ref]
    losses = [(a["loss"], b["loss"]) for a, b in zip(two, ref) if "loss" in a]
    assert len(losses) == 4 and all(abs(a - b) < 1e-5 for a, b in losses), losses
    assert [a["tokens"] for a in two if "tokens" in a] == [b["tokens"] for b in ref if "tokens" in b]
    saved = load_trainer_state(tmp_path / "run" / "checkpoint")
    assert saved["state"]["step"] == 4
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


RL_GROUPS, RL_MINIBATCHES = 7, 2  # minibatches of 4 + 3 groups: rank shards 2 + 2 and 2 + 1
GRAD_RTOL = 1e-5  # max |g_2 ranks - g_1 process| <= GRAD_RTOL * max |g_1 process| (float32)


def rl_learners() -> dict:
    """Every learner and aggregation whose normalisation must be global (RISER with all components)."""
    from agents.learners import GRPO, RISER, SimPO
    from agents.learners.grpo import GRPOConfig
    from agents.learners.riser import RISERConfig
    from agents.learners.simpo import SimPOConfig

    out = {f"grpo-{t}": GRPO(GRPOConfig(group_size=4, beta=0.04, loss_type=t)) for t in ("grpo", "dapo",
                                                                                          "dr_grpo")}
    out["riser"] = RISER(RISERConfig(group_size=4, oversample=6, beta=0.04, kl_cov_k=0.1, certainty_d=0.7,
                                     simpo_weight=1.0))
    out["simpo"] = SimPO(SimPOConfig(group_size=4))
    return out


def fixed_rl_batch(path: Path) -> None:
    """A given global batch of RISER rollouts (oversampled 6 -> 4) with hit and all-miss groups in
    every minibatch, and behaviour / reference log-probs away from the policy's (rho != 1, KL != 0)."""
    from agents.learners.base import group_advantages
    from agents.model.policy import make_rollout_env

    task, policy = eval_setup()
    learner = rl_learners()["riser"]
    envs = make_rollout_env(task, RL_GROUPS * learner.rollouts_per_request)
    batch = learner.collect(policy, envs, np.arange(RL_GROUPS), generator=torch.Generator().manual_seed(0),
                            seed=0)
    hits = torch.zeros(RL_GROUPS, 4, dtype=torch.bool)
    hits[[0, 2, 3, 5], [0, 1, 0, 2]] = True  # groups 1, 4, 6 fail: SimPO pairs on both ranks' shards
    batch.hits = hits.reshape(-1)
    batch.rewards = batch.hits.float() + 0.1 * torch.rand(len(batch.hits), generator=torch.Generator()
                                                                                   .manual_seed(1))
    batch.advantages = group_advantages(batch.rewards, 4)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        logp = learner.logprobs(policy, batch)[0]
    batch.old_logp = (logp + 0.1 * torch.randn(logp.shape, generator=g)) * batch.mask
    batch.ref_logp = (logp + 0.1 * torch.randn(logp.shape, generator=g)) * batch.mask
    torch.save(batch, path)


def flat_grads(policy) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in policy.trainable_parameters()])


def test_two_rank_rl_losses_give_the_global_gradient(tmp_path):
    """Each learner's loss on a rank's share of a global minibatch, summed over 2 ranks = one process."""
    fixed_rl_batch(tmp_path / "batch.pt")
    torchrun("rl_grads", tmp_path)
    torch.set_num_threads(1)
    task, policy = eval_setup()
    batch = torch.load(tmp_path / "batch.pt", weights_only=False)
    got = [torch.load(tmp_path / f"rl-grads-rank{r}.pt") for r in range(2)]
    for name, learner in rl_learners().items():
        for j, minibatch in enumerate(batch.split(RL_MINIBATCHES)):
            policy.model.zero_grad(set_to_none=True)
            loss, _ = learner.loss(policy, minibatch)
            loss.backward()
            want = flat_grads(policy)
            assert want.abs().max() > 0, (name, j)
            for r in range(2):
                g_loss, grads = got[r][name][j]
                diff = float((grads - want).abs().max())
                assert diff <= GRAD_RTOL * float(want.abs().max()), (name, j, r, diff)
                assert abs(g_loss - float(loss)) <= 1e-5 * max(1.0, abs(float(loss))), (name, j, g_loss)


RL_CONFIG = {"steps": 2, "requests_per_step": 5, "minibatches": 2, "lr": 1e-3, "warmup_steps": 0,
             "eval_every": 1, "eval_requests": 16, "beam": 10, "patience": 0, "progress": False}


def one_process_rollouts(task, sampler, cfg):
    """RISER drawing every request's rollouts with one process's seed and keeping this rank's groups.

    Rollouts are the only thing a rank draws for itself (``rank_seed``), so with this learner a 2-rank
    ``train_rl`` must take exactly one process's steps: a test of the loop's sharding end to end.
    """
    from agents.model.policy import make_rollout_env

    learner = rl_learners()["riser"]
    base_collect, envs, calls = learner.collect, {}, [0]

    def collect(policy, local_envs, rows, *, generator, seed):
        step, calls[0] = calls[0], calls[0] + 1
        every = sampler.rows(step)
        if "all" not in envs:
            envs["all"] = make_rollout_env(task, len(every) * learner.rollouts_per_request)
        base = cfg.seed * 1_000_003 + step
        generator = torch.Generator().manual_seed(base)
        full = base_collect(policy, envs["all"], every, generator=generator, seed=base)
        keep = np.concatenate(dist.minibatch_shards(len(every), cfg.minibatches))
        assert (every[keep] == rows).all()  # the loop asked for this rank's share of each minibatch
        return full.select_groups(keep)

    learner.collect = collect
    return learner


def run_rl_loop(run: Path, padded: bool = False, **extra):
    from agents.configs import RLConfig
    from agents.training.rl import EpochSampler, train_rl

    train, valid, policy = sft_setup(seed=dist.rank(), padded=padded)
    cfg = RLConfig(**RL_CONFIG, **extra)
    sampler = EpochSampler(train.num_requests, cfg.requests_per_step, cfg.seed)
    learner = one_process_rollouts(train, sampler, cfg)
    summary = train_rl(policy, learner, train, valid, cfg, run_dir=run, sampler=sampler)
    return summary, policy


def test_two_rank_rl_loop_takes_one_process_steps(tmp_path):
    """2 RISER steps (5 requests in minibatches of 3 + 2: rank shards 2 + 1 and 1 + 1) on 2 ranks,
    rollouts drawn as one process draws them: the same weights, logs and validations."""
    from agents.training.tracking import MetricLogger

    torchrun("rl_loop", tmp_path)
    torch.set_num_threads(1)
    one, policy = run_rl_loop(tmp_path / "one")
    want = policy.model.state_dict()
    got = [torch.load(tmp_path / f"rl-rank{r}.pt") for r in range(2)]
    assert max_weight_diff(got[0], got[1]) == 0  # summed gradients: the ranks never drift apart
    diff = max_weight_diff(got[0], want)
    assert diff < WEIGHT_TOL, diff
    summary = json.loads((tmp_path / "rl-rank0.json").read_text())
    assert summary["valid_history"] == one["valid_history"] and summary["steps"] == 2
    two, ref = MetricLogger.read(tmp_path / "run"), MetricLogger.read(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in ref]  # rank 0 alone logged
    for a, b in zip(two, ref):
        for key in ("loss", "grad_norm", "valid/HR@10"):
            assert (key in a) == (key in b) and abs(a.get(key, 0) - b.get(key, 0)) < 1e-5, (key, a, b)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


# -- FSDP (agents.parallel.fsdp): one launch runs every scenario below, with and without --fsdp -------

FSDP_SFT = {**SFT_CONFIG, "eval_requests": 10}  # one batch: rank 1 searches nothing while rank 0 searches
FSDP_TOL = 1e-6  # max |w_fsdp - w_replicated|, 2 ranks, float32: only the clipping norm's float order differs


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """One torchrun launch of the 'fsdp' scenario: the gradient norm, SFT and RL with and without FSDP,
    an FSDP SFT run stopped after its first checkpoint and resumed, and a gathered save."""
    out = tmp_path_factory.mktemp("fsdp")
    torchrun("fsdp", out, timeout=240, RECGYM_DIST_TIMEOUT="60")  # mismatched collectives fail in 60 s
    return out


def test_fsdp_grad_norm_counts_replicated_gradients_once(fsdp_run):
    """A sharded gradient [1, 2 | 2, 0] (rank 0 | rank 1) and a replicated one [3, 4]: the global norm is
    sqrt(1 + 4 + 4 + 0 + 25) = sqrt(34); counting [3, 4] on both ranks would give sqrt(59), forgetting the
    other rank's shard sqrt(30) or sqrt(29)."""
    want = 34 ** 0.5
    coef = 1.0 / (want + 1e-6)  # max_norm 1: every gradient is scaled by it, as torch clips
    for r in range(2):
        got = json.loads((fsdp_run / f"norm-rank{r}.json").read_text())
        assert abs(got["norm"] - want) < 1e-6, (r, got["norm"])
        np.testing.assert_allclose(got["sharded"], np.array([1.0, 2.0, 2.0, 0.0]) * coef, rtol=1e-6)
        np.testing.assert_allclose(got["replicated"], np.array([3.0, 4.0]) * coef, rtol=1e-6)
        mine = np.array([1.0, 2.0] if r == 0 else [2.0, 0.0])  # this rank's shard, scaled in place
        np.testing.assert_allclose(got["local"], mine * coef, rtol=1e-6)
        assert abs(got["unclipped"] - want) < 1e-6  # max_norm above the norm: nothing scaled
        assert got["unclipped_replicated"] == [3.0, 4.0]


def test_fsdp_sft_takes_the_replicated_steps_and_resumes(fsdp_run):
    """4 SFT steps (shards of 5 + 4 rows) with --fsdp on 2 ranks = the same 2 ranks without it (which the
    tests above compare with one process), also for a batch of 1 row (rank 1's shard empty); a run
    stopped after its step-2 checkpoint resumes under FSDP to the same weights; the policy ends as an
    ordinary model with tied embeddings."""
    from agents.training.checkpoint import load_trainer_state
    from agents.training.tracking import MetricLogger

    # The scenario sharded 6 policies per rank (a check that fsdp=True did shard): SFT, its 1-row batch,
    # the stopped and the resumed run, the gathered save and RL; none without it.
    assert [json.loads((fsdp_run / f"sharded-rank{r}.json").read_text()) for r in range(2)] == [6, 6]
    want = torch.load(fsdp_run / "sft-ddp-rank0.pt")
    ddp = json.loads((fsdp_run / "sft-ddp-rank0.json").read_text())
    for r in range(2):
        for run in ("fsdp", "resumed"):
            diff = max_weight_diff(torch.load(fsdp_run / f"sft-{run}-rank{r}.pt"), want)
            assert diff < FSDP_TOL, (run, r, diff)
            summary = json.loads((fsdp_run / f"sft-{run}-rank{r}.json").read_text())
            assert summary["valid_history"] == ddp["valid_history"] and summary["steps"] == 4
        after = json.loads((fsdp_run / f"sft-fsdp-after-rank{r}.json").read_text())
        assert after == {"sharded_params": 0, "tied": True, "trainable": True, "is_sharded": False}
        diff = max_weight_diff(torch.load(fsdp_run / f"sft-empty-fsdp-rank{r}.pt"),
                               torch.load(fsdp_run / "sft-empty-ddp-rank0.pt"))
        assert diff < FSDP_TOL, ("empty shard", r, diff)
    said = json.loads((fsdp_run / "sft-resumed-rank0.json").read_text())
    assert said["stopped_at"] == 2  # the first run stopped before its step-4 checkpoint
    for run in ("fsdp", "resumed"):
        logs, ref = MetricLogger.read(fsdp_run / f"sft-{run}"), MetricLogger.read(fsdp_run / "sft-ddp")
        assert [r["step"] for r in logs] == [r["step"] for r in ref]  # each step logged once
        for a, b in zip(logs, ref):
            for key in ("loss", "grad_norm"):
                assert abs(a.get(key, 0) - b.get(key, 0)) <= 1e-6 * max(1.0, abs(b.get(key, 0))), (run, key)
    # The checkpoint written under FSDP is one process's: the same weights and AdamW state as without it.
    got, ref = (load_trainer_state(fsdp_run / f"sft-{run}" / "checkpoint") for run in ("fsdp", "ddp"))
    assert got["state"]["step"] == ref["state"]["step"] == 4
    assert got["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
    assert got["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for index, moments in ref["optimizer"]["state"].items():
        for key, value in moments.items():
            assert got["optimizer"]["state"][index][key].shape == value.shape
            assert float((got["optimizer"]["state"][index][key] - value).abs().max()) < FSDP_TOL, (index, key)


def test_fsdp_checkpoint_loads_in_one_process(fsdp_run):
    """best/ and checkpoint/ written under FSDP load with LLMPolicy.from_pretrained in one process; a
    gathered save holds exactly the sharded weights (= the unsharded start), as does the restored model."""
    from agents.model.policy import LLMPolicy

    torch.set_num_threads(1)
    start = torch.load(fsdp_run / "gathered-start.pt")  # the weights before sharding
    gathered = torch.load(fsdp_run / "gathered.pt")
    assert max_weight_diff(gathered, start) == 0
    loaded = LLMPolicy.from_pretrained(fsdp_run / "gathered", device="cpu")
    assert max_weight_diff(loaded.model.state_dict(), start) == 0
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    for r in range(2):
        assert max_weight_diff(torch.load(fsdp_run / f"gathered-restored-rank{r}.pt"), start) == 0
    ckpt = LLMPolicy.from_pretrained(fsdp_run / "sft-fsdp" / "checkpoint", device="cpu").model.state_dict()
    assert max_weight_diff(ckpt, LLMPolicy.from_pretrained(fsdp_run / "sft-ddp" / "checkpoint", device="cpu")
                           .model.state_dict()) < FSDP_TOL
    best = LLMPolicy.from_pretrained(fsdp_run / "sft-fsdp" / "best", device="cpu").model.state_dict()
    assert max_weight_diff(best, torch.load(fsdp_run / "sft-fsdp-rank0.pt")) == 0  # the policy ends on best/


def test_fsdp_rl_takes_the_replicated_steps(fsdp_run):
    """2 RISER steps (rank shards 2 + 1 and 1 + 1 groups, validation at each step) with --fsdp on 2 ranks
    = the same 2 ranks without it: weights, logged loss / gradient norm and validations."""
    from agents.training.tracking import MetricLogger

    want = torch.load(fsdp_run / "rl-ddp-rank0.pt")
    ddp = json.loads((fsdp_run / "rl-ddp-rank0.json").read_text())
    for r in range(2):
        diff = max_weight_diff(torch.load(fsdp_run / f"rl-fsdp-rank{r}.pt"), want)
        assert diff < FSDP_TOL, (r, diff)
        summary = json.loads((fsdp_run / f"rl-fsdp-rank{r}.json").read_text())
        assert summary["valid_history"] == ddp["valid_history"] and summary["steps"] == 2
    logs, ref = MetricLogger.read(fsdp_run / "rl-fsdp"), MetricLogger.read(fsdp_run / "rl-ddp")
    assert [r["step"] for r in logs] == [r["step"] for r in ref]
    for a, b in zip(logs, ref):
        for key in ("loss", "grad_norm", "valid/HR@10"):
            assert (key in a) == (key in b) and abs(a.get(key, 0) - b.get(key, 0)) < 1e-6, (key, a, b)


def test_fsdp_is_a_note_in_one_process_and_refuses_adapters(tiny_sid):
    from agents.cli import build_parser
    from agents.parallel import fsdp

    task, policy = tiny_sid
    with pytest.warns(UserWarning, match="no effect in one process"):
        assert fsdp.wanted(True, policy) is False
    assert build_parser().parse_args(["sft", "--fsdp"]).fsdp is True
    assert build_parser().parse_args(["train"]).fsdp is False
    lora = type(policy).from_config("tiny", task.items, seed=0, device="cpu").add_lora(r=2)
    with pytest.raises(ValueError, match=r"--fsdp\) does not work with adapters \(--lora-r, --freeze"):
        fsdp.wanted(True, lora)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    q = torch.nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, 4.0])
    assert float(dist.clip_grad_norm([p], 1.0)) == float(torch.nn.utils.clip_grad_norm_([q], 1.0)) == 5.0
    assert p.grad.tolist() == q.grad.tolist()  # without sharded gradients it is torch's clip_grad_norm_


CLI_SFT = ["sft", "--representation", "sid", "--dataset-set", "num_items=200", "--dataset-set",
           "num_users=150", "--max-steps", "12", "--batch-size", "16", "--eval-every", "2",
           "--eval-requests", "10", "--test-requests", "10", "--patience", "0"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(stat.parent.name))
    return kids + [d for k in kids for d in descendants(k)]


def test_recgym_sft_under_torchrun_resumes_after_kill_and_rank0_writes(tmp_path):
    """`torchrun -m agents.cli sft`: kill -9 of the whole job after its first checkpoint, then the same
    command resumes from it and ends; rank 0 alone printed and wrote (every step logged once)."""
    import signal
    import time

    from agents.training.checkpoint import find_checkpoint, load_trainer_state

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "agents.cli", *CLI_SFT, "--out", str(run)]
    env = _env(RECGYM_DATA_DIR=str(tmp_path / "cache"))
    log = tmp_path / "first-run.log"
    with open(log, "wb") as sink:
        job = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint" / "trainer_state.pt").exists() and job.poll() is None:
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        ended = job.poll()
        assert ended is None, f"the job ended on its own (exit {ended}): {log.read_text()[-3000:]}"
    finally:
        ranks = descendants(job.pid)  # torchrun's workers may sit in sessions of their own
        for pid in [job.pid, *ranks]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the launcher and both ranks at once
        job.wait()
        while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.time() < deadline + 10:
            time.sleep(0.05)
    assert not (run / "results.json").exists()  # killed mid-run
    # as resume finds it: a kill between the swap's two renames leaves the complete one as checkpoint.old
    killed_at = load_trainer_state(find_checkpoint(run / "checkpoint"))["state"]["step"]
    assert 2 <= killed_at < 12
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert f"from step {killed_at}" in done.stderr and done.stderr.count("resuming") == 1, done.stderr[-3000:]
    assert done.stdout.count("| sft (tiny) |") == 1 and done.stdout.count("results.json") == 1
    results = json.loads((run / "results.json").read_text())
    assert results["sft"]["steps"] == 12 and results["test"]["requests"] == 10
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))  # each step once
    assert not (run / "run.lock").exists()


def test_recgym_bench_under_torchrun_writes_once_and_tests_exactly(tmp_path):
    """`torchrun -m agents.cli bench`: the SFT start, RL and tests data-parallel, the classic and
    MaskablePPO rows on every rank; rank 0 alone prints and writes; the sharded test of the saved
    SFT start equals one process's on the same weights."""
    from agents.bench.runner import get_preset
    from agents.build import make_task
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate

    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "agents.cli", "bench", "--preset", "ci", "--agents", "popularity,sft,grpo,maskable_ppo", "--seeds",
           "0", "--sft-steps", "6", "--rl-steps", "2", "--requests-per-step", "4", "--rollouts", "4",
           "--preset-set", "riser_group=2", "--preset-set", "ppo_episodes_per_update=16",
           "--test-requests", "20", "--eval-requests", "10", "--quiet", "--out", str(out)]
    done = run_job(cmd, tmp_path, env=_env(RECGYM_DATA_DIR=str(tmp_path / "cache")), cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.count("| grpo |") == 1 and done.stdout.count("| maskable_ppo |") == 1  # rank 0 only
    results = json.loads((out / "results.json").read_text())
    assert list(results["agents"]) == ["popularity", "sft", "grpo", "maskable_ppo"]
    for name, agent in results["agents"].items():
        assert agent["runs"]["0"]["metrics"]["requests"] == 20, name  # the shards gathered
    assert results["agents"]["grpo"]["runs"]["0"]["rollouts"] == 2 * 4 * 4
    assert not (out / "run.lock").exists()
    assert (out / "runs" / "maskable_ppo-seed0" / "metrics.jsonl").exists()
    preset = get_preset("ci")
    test = make_task(preset.env, "test", preset.task)
    start = LLMPolicy.from_pretrained(out / "sft" / "final")
    one = evaluate(start, test, beam=preset.beam, max_requests=20, seed=preset.test_seed, progress=False,
                   per_request=True)
    del one["rows"]
    assert results["agents"]["sft"]["runs"]["0"]["metrics"] == one


# -- the scenarios, run by each rank ------------------------------------------------------------------


def scenario_train(out: Path) -> None:
    from agents.training.evaluate import evaluate, request_hits, select_rows

    task, policy = eval_setup()
    searched = []
    search = policy.beam_search

    def counting(prompt_ids, prompt_len, **kwargs):
        searched.append(len(prompt_ids))
        return search(prompt_ids, prompt_len, **kwargs)

    policy.beam_search = counting
    rows = select_rows(task.num_requests, EVAL_ROWS, seed=0)
    hits, missing = request_hits(policy, task, rows, beam=EVAL_BEAM, k=EVAL_BEAM, batch_size=EVAL_BATCH,
                                 progress=False)
    np.savez(out / f"eval-rank{dist.rank()}.npz", hits=hits, missing=missing, searched=sum(searched))
    metrics = evaluate(policy, task, beam=EVAL_BEAM, batch_size=EVAL_BATCH, max_requests=EVAL_ROWS,
                       progress=False)
    (out / f"eval-rank{dist.rank()}.json").write_text(json.dumps(metrics))


def scenario_failures(out: Path) -> None:
    from agents.configs import SFTConfig

    try:
        with dist.agree("arguments"):
            SFTConfig(lr=float("nan") if dist.rank() == 1 else 1e-3)
    except Exception as err:  # noqa: BLE001 - recorded for the test
        (out / f"failure-rank{dist.rank()}.txt").write_text(f"{type(err).__name__}: {err}")
    dist.barrier()  # after a sync point every rank is still in step
    with dist.stop_all_on_error():
        if dist.rank() == 1:
            raise RuntimeError("rank 1 crashed")
        dist.all_sum(1.0)  # rank 0 waits here for a peer that is gone


def scenario_sft(out: Path) -> None:
    from agents.training.sft import SFTConfig, train_sft

    train, valid, policy = sft_setup(seed=dist.rank())  # rank 1 starts from other weights
    summary = train_sft(policy, train, valid, SFTConfig(**SFT_CONFIG), run_dir=out / "run")
    torch.save(policy.model.state_dict(), out / f"sft-rank{dist.rank()}.pt")
    (out / f"sft-rank{dist.rank()}.json").write_text(json.dumps(summary))


def scenario_rl_grads(out: Path) -> None:
    task, policy = eval_setup()
    batch = torch.load(out / "batch.pt", weights_only=False)
    results: dict = {}
    for name, learner in rl_learners().items():
        for groups in dist.minibatch_shards(RL_GROUPS, RL_MINIBATCHES):
            policy.model.zero_grad(set_to_none=True)
            with dist.loss_sync():
                loss, _ = learner.loss(policy, batch.select_groups(groups))
            loss.backward()
            dist.sum_gradients(policy.trainable_parameters())
            results.setdefault(name, []).append((dist.all_sum(float(loss.detach())), flat_grads(policy)))
    torch.save(results, out / f"rl-grads-rank{dist.rank()}.pt")


def scenario_rl_loop(out: Path) -> None:
    summary, policy = run_rl_loop(out / "run")
    torch.save(policy.model.state_dict(), out / f"rl-rank{dist.rank()}.pt")
    (out / f"rl-rank{dist.rank()}.json").write_text(json.dumps(summary, default=str))


def scenario_fsdp(out: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import agents.training.sft as sft_module
    from agents.parallel import fsdp
    from agents.training.checkpoint import load_trainer_state, write_folder_atomically
    from agents.training.loop import policy_writer
    from agents.training.sft import SFTConfig, train_sft

    # The gradient norm over a sharded and a replicated gradient (test_fsdp_grad_norm_...).
    mesh = init_device_mesh("cpu", (2,))
    record = {}
    for max_norm, tag in ((1.0, ""), (100.0, "unclipped")):
        a = torch.nn.Parameter(distribute_tensor(torch.zeros(4), mesh, [Shard(0)]))
        a.grad = distribute_tensor(torch.tensor([1.0, 2.0, 2.0, 0.0]), mesh, [Shard(0)])
        b = torch.nn.Parameter(torch.zeros(2))
        b.grad = torch.tensor([3.0, 4.0])
        norm = float(dist.clip_grad_norm([a, b], max_norm))
        if tag:
            record.update(unclipped=norm, unclipped_replicated=b.grad.tolist())
        else:
            record.update(norm=norm, sharded=a.grad.full_tensor().tolist(), local=a.grad.to_local().tolist(),
                          replicated=b.grad.tolist())
    (out / f"norm-rank{dist.rank()}.json").write_text(json.dumps(record))

    def save(policy, summary, name):
        torch.save(policy.model.state_dict(), out / f"{name}-rank{dist.rank()}.pt")
        (out / f"{name}-rank{dist.rank()}.json").write_text(json.dumps(summary, default=str))

    sharded, shard = [], fsdp.shard  # which runs sharded their policy (a check that --fsdp did something)

    def counting_shard(policy):
        sharded.append(1)
        return shard(policy)

    fsdp.shard = counting_shard

    # SFT with and without FSDP; the FSDP policy ends as an ordinary, tied model. It keeps the default
    # length buckets, which FSDP turns off (ranks' bucket counts differ): it must match the padded run.
    for name, extra in (("ddp", {}), ("fsdp", {"fsdp": True})):
        train, valid, policy = sft_setup(seed=dist.rank(), padded=name == "ddp")
        config = SFTConfig(**FSDP_SFT, **extra)
        save(policy, train_sft(policy, train, valid, config, run_dir=out / f"sft-{name}"), f"sft-{name}")
    (out / f"sft-fsdp-after-rank{dist.rank()}.json").write_text(json.dumps({
        "sharded_params": sum(fsdp.is_dtensor(p) for p in policy.model.parameters()),
        "tied": policy.model.lm_head.weight is policy.model.model.embed_tokens.weight,
        "trainable": all(p.requires_grad for p in policy.model.parameters()),
        "is_sharded": fsdp.is_sharded(policy.model)}))
    for name, extra in (("ddp", {}), ("fsdp", {"fsdp": True})):  # 229 rows, then 1: rank 1 has none
        _, valid, policy = sft_setup(seed=dist.rank(), padded=True)
        config = SFTConfig(batch_size=valid.num_requests - 1, max_steps=2, lr=3e-3, warmup_steps=1,
                           progress=False, **extra)
        save(policy, train_sft(policy, valid, None, config), f"sft-empty-{name}")

    # An FSDP run that stops after its step-2 checkpoint (every rank, at the step-4 one), then resumes.
    saving, calls = sft_module.save_training, []

    def stop_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return saving(*args, **kwargs)

    sft_module.save_training = stop_at_second
    train, valid, policy = sft_setup(seed=dist.rank(), padded=True)
    cfg = SFTConfig(**FSDP_SFT, fsdp=True)
    with contextlib.suppress(RuntimeError):  # rank 0's own error; a DistributedError on rank 1
        train_sft(policy, train, valid, cfg, run_dir=out / "sft-resumed")
    sft_module.save_training = saving
    stopped_at = load_trainer_state(out / "sft-resumed" / "checkpoint")["state"]["step"]
    train, valid, policy = sft_setup(seed=dist.rank(), padded=True)
    summary = train_sft(policy, train, valid, cfg, run_dir=out / "sft-resumed")
    save(policy, {**summary, "stopped_at": stopped_at}, "sft-resumed")

    # A gathered save of sharded weights, and the restored model (test_fsdp_checkpoint_loads_...).
    policy = sft_setup(seed=0)[2]  # no forward here: buckets play no part
    torch.save({k: v.clone() for k, v in policy.model.state_dict().items()}, out / "gathered-start.pt")
    sharding = fsdp.shard(policy)
    full, write = fsdp.full_state_dict(policy.model), policy_writer(policy)
    with dist.on_main("saving") as main:
        if main:
            write_folder_atomically(out / "gathered", write)
            torch.save(full, out / "gathered.pt")
    sharding.restore()
    torch.save(policy.model.state_dict(), out / f"gathered-restored-rank{dist.rank()}.pt")

    # RL (RISER, one process's rollouts) with and without FSDP.
    for name, extra in (("ddp", {}), ("fsdp", {"fsdp": True})):
        summary, policy = run_rl_loop(out / f"rl-{name}", padded=True, **extra)
        save(policy, summary, f"rl-{name}")
    fsdp.shard = shard
    (out / f"sharded-rank{dist.rank()}.json").write_text(json.dumps(len(sharded)))


SCENARIOS = {"train": scenario_train, "failures": scenario_failures, "sft": scenario_sft,
             "rl_grads": scenario_rl_grads, "rl_loop": scenario_rl_loop, "fsdp": scenario_fsdp}

if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init()
    try:
        SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    finally:
        if dist.is_distributed():
            dist.cleanup()
