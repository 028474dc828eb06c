"""agents.distributed and the sharded loops, with 2 gloo processes launched as torchrun launches them.

The 2-process scenarios live at the bottom of this file (``python tests/test_distributed.py
SCENARIO OUT``); the tests launch them with ``python -m torch.distributed.run --standalone
--nproc-per-node 2`` (or, for the failure rule, as two plain processes with torchrun's variables,
so that no launcher kills a rank for us) and compare what every rank wrote with one process's
numbers computed here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import distributed as dist

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


def torchrun(scenario: str, out: Path, timeout: float = 150) -> None:
    """Run a scenario in 2 gloo processes under torchrun; fail with their output if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), scenario, str(out)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
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
    from agents.policy import LLMPolicy
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
    from agents.evaluate import evaluate, request_hits, select_rows

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


# -- the scenarios, run by each rank ------------------------------------------------------------------


def scenario_train(out: Path) -> None:
    from agents.evaluate import evaluate, request_hits, select_rows

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


SCENARIOS = {"train": scenario_train, "failures": scenario_failures}

if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init()
    try:
        SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    finally:
        if dist.is_distributed():
            dist.cleanup()
