"""The reliability suite: runs that never lie (issues 15 and 26), one test per case.

Each case gives the right result, or a clear error that names the file or argument and the remedy,
and loses nothing. Every run here is tiny (a 200-item synthetic catalogue, a few steps).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.build import make_task
from agents.cli import main
from agents.model.policy import LLMPolicy
from agents.training.evaluate import evaluate
from agents.training.sft import SFTConfig, train_sft
from agents.training.tracking import MetricLogger
from recgym.data import make_synthetic
from recgym.envs import RecGenTask

SMALL = ["--dataset-set", "num_items=200", "--dataset-set", "num_users=150"]
SFT = ["sft", "--representation", "sid", *SMALL, "--max-steps", "4", "--batch-size", "16",
       "--eval-every", "2", "--eval-requests", "8", "--test-requests", "8"]
TRAIN = ["train", "--representation", "sid", *SMALL, "--sft-steps", "2", "--sft-batch-size", "16",
         "--steps", "2", "--requests-per-step", "3", "--group-size", "3", "--eval-every", "1",
         "--eval-requests", "8", "--test-requests", "8"]
RISER = ["--agent", "riser", "--oversample", "4"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECGYM_DATA_PATH", raising=False)


def cli(argv, capture):
    """``(exit code, stderr)`` of ``recgym argv`` (argparse's own errors exit through SystemExit);
    ``capture`` is pytest's capsys or capfd."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capture.readouterr().err


def finite_weights(folder: Path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(folder / "model.safetensors").values())


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


def kill_after(monkeypatch, module, name, calls):
    """``module.name`` raises :class:`Killed` on call number ``calls + 1``."""
    real, count = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.fixture(scope="module")
def small():
    """(train, valid) of a 60-item synthetic SID task."""
    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    train = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    return train, RecGenTask(ds, split="valid", tokenizer=train.items)


# 1 -------------------------------------------------------------------------------------------------


def test_a_rerun_with_other_settings_is_refused_and_restart_starts_over(tmp_path, capsys):
    run = tmp_path / "train"
    assert cli([*TRAIN, *RISER, "--out", str(run)], capsys)[0] == 0
    first = json.loads((run / "results.json").read_text())
    other = [*TRAIN, "--agent", "grpo", "--steps", "3", "--lr", "5e-3", "--out", str(run)]
    code, err = cli(other, capsys)
    assert code == 2
    assert f"{run / 'rl'} holds a run with other settings" in err
    for line in ("learner.name: riser -> grpo", "config.steps: 2 -> 3", "config.lr: 0.0001 -> 0.005"):
        assert line in err, err
    assert "--restart" in err and "--out" in err
    assert json.loads((run / "results.json").read_text()) == first  # nothing was touched
    # The same settings resume (here: nothing left to train) and report the same numbers.
    assert cli([*TRAIN, *RISER, "--out", str(run)], capsys)[0] == 0
    again = json.loads((run / "results.json").read_text())
    assert again["test"] == first["test"] and again["rl"]["steps"] == 2
    # --restart: the new settings, trained from their start.
    assert cli([*other, "--restart"], capsys)[0] == 0
    results = json.loads((run / "results.json").read_text())
    assert results["agent"]["name"] == "grpo" and results["rl"]["steps"] == 3
    assert results["rl"]["rollouts"] == 3 * 3 * 3
    assert [r["step"] for r in MetricLogger.read(run / "rl") if "loss" in r] == [1, 2, 3]
    recorded = json.loads((run / "rl" / "fingerprint.json").read_text())
    assert recorded["learner"]["name"] == "grpo" and recorded["config"]["lr"] == 5e-3
    # SFT runs have the same check.
    sft = tmp_path / "sft"
    assert cli([*SFT, "--out", str(sft)], capsys)[0] == 0
    code, err = cli([*SFT, "--lr", "1e-2", "--out", str(sft)], capsys)
    assert code == 2 and "config.lr: 0.003 -> 0.01" in err and "--restart" in err


# 2 -------------------------------------------------------------------------------------------------


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "sft"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom agents.training.runs import RunLock\n"
         f"RunLock({str(out)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = cli([*SFT, "--out", str(out)], capsys)
        assert code == 2
        assert f"{out} is in use by another run (pid {holder.pid}" in err and "another --out" in err
        assert not (out / "metrics.jsonl").exists()  # the second run wrote nothing
    finally:
        holder.kill()  # like kill -9: its lock file stays behind
        holder.wait()
    assert (out / "run.lock").exists()
    assert cli([*SFT, "--out", str(out)], capsys)[0] == 0  # a dead pid's lock is stale
    assert not (out / "run.lock").exists() and (out / "results.json").exists()


# 3 -------------------------------------------------------------------------------------------------


def test_resumed_steps_are_logged_once_and_a_torn_last_line_is_dropped(small, tmp_path, monkeypatch):
    import agents.training.sft

    train, valid = small
    cfg = SFTConfig(epochs=1, batch_size=16, max_steps=6, eval_every=3, eval_requests=10, beam=10, patience=0,
                    progress=False)
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # killed during step 5: steps 1-4 logged, the checkpoint at 3
        kill_after(m, agents.training.sft.SFTObjective, "loss", 4)
        with pytest.raises(Killed):
            policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
            train_sft(policy, train, valid, cfg, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "time": 0.4, "lo')  # and a kill in the middle of a write
    assert [r["step"] for r in MetricLogger.read(run) if "loss" in r] == [1, 2, 3, 4]  # read skips it
    train_sft(LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu"), train, valid, cfg, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "valid/HR@10" in r] == [3, 6]
    # A damaged line that is not the last one: the error names the file and the line.
    lines[1] = "not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.jsonl'}, line 2")):
        MetricLogger.read(run)


# 4 -------------------------------------------------------------------------------------------------


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_saves_nothing_non_finite(tmp_path, capsys):
    sft = tmp_path / "sft"
    args = [*SFT, "--max-steps", "8", "--lr", "1e6", "--out", str(sft)]
    code, err = cli(args, capsys)
    assert code == 2
    assert re.search(r"training diverged at step \d+: the (loss|gradient norm) is (nan|inf)", err), err
    assert "--lr, now 1e+06" in err and "--restart" in err
    assert all(math.isfinite(r["loss"]) for r in MetricLogger.read(sft) if "loss" in r)
    for folder in ("best", "checkpoint"):
        assert not (sft / folder).exists() or finite_weights(sft / folder), folder
    assert not (sft / "results.json").exists()  # no results from a diverged run
    # RL from a saved policy: stops, keeps a finite checkpoint; the rerun says the same, no crash.
    task = make_task("RecGen-Synthetic-v0", "train", {"representation": "sid",
                                                      "dataset_kwargs": {"num_items": 200, "num_users": 150}})
    start = tmp_path / "start"
    LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu").save_pretrained(start)
    # lr 1e30 overflows float32 in the first update; at 1e6 whether 6 steps overflow depends on the CPU's
    # kernels (they did not on one machine here: the policy became deterministic and stopped moving).
    rl = [*TRAIN, "--agent", "grpo", "--sft", str(start), "--steps", "6", "--eval-every", "2", "--lr", "1e30",
          "--out", str(tmp_path / "rl")]
    code, err = cli(rl, capsys)
    assert code == 2 and "training diverged at step" in err and "--lr" in err
    for folder in ("best", "checkpoint"):
        path = tmp_path / "rl" / "rl" / folder
        assert not path.exists() or finite_weights(path), folder
    again, err_again = cli(rl, capsys)
    assert again == 2 and err_again.splitlines()[-1] == err.splitlines()[-1]


# 5 -------------------------------------------------------------------------------------------------


def test_arguments_are_checked_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    import agents.build

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    out = tmp_path / "x"
    with monkeypatch.context() as m:
        m.setattr(agents.build, "make_task", no_data)
        for extra, message in (
            (["--beam", "5"], "--metric NDCG@10: not computed at beam=5"),
            (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
            (["--lr=-1e-4"], "--lr -0.0001: must be a finite number > 0"),
            (["--sft-lr", "nan"], "--sft-lr nan: must be a finite number > 0"),
            (["--sft-batch-size", "0"], "--sft-batch-size 0: must be an int >= 1"),
            (["--requests-per-step", "0"], "--requests-per-step 0: must be an int >= 1"),
            (["--eval-requests", "0"], "--eval-requests 0: must be an int >= 1"),
            (["--test-requests", "0"], "argument --test-requests: expected a positive integer, got '0'"),
            (["--subset", str(tmp_path / "missing.json")], f"argument --subset: no such file: {tmp_path}"),
            (["--sft", str(tmp_path)], "is not a policy saved by recgym"),
            (["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N"),
        ):
            code, err = cli(["train", *extra, "--out", str(out)], capsys)
            assert code == 2 and message in err, (extra, err)
        code, err = cli(["sft", "--metric", "HR@7", "--out", str(out)], capsys)
        assert code == 2 and "--metric HR@7: choose one of" in err
        # A metric the beam computes passes the checks of both stages (the SFT stage's included).
        with pytest.raises(AssertionError, match="data was loaded"):
            main(["train", "--beam", "5", "--metric", "HR@5", "--out", str(out)])
        code, err = cli(["bench", "--preset-set", "rl_lr=-1", "--out", str(out)], capsys)
        assert code == 2 and "rl_lr must be a finite number > 0" in err
    assert not out.exists()
    # Unknown or ill-typed task and dataset options: `recgym: error:` and exit 2, not a traceback.
    for extra, message in ((["--set", "nonsense=1"], "--set: unknown task option(s) ['nonsense']"),
                           (["--set", "vocab_size=abc"], "vocab_size must be an int"),
                           (["--dataset-set", "nonsense=1"], "unknown option 'nonsense' for dataset")):
        code, err = cli(["sft", *SMALL, *extra, "--out", str(out)], capsys)
        assert code == 2 and err.startswith("recgym: error:") and message in err, (extra, err)


# 6 -------------------------------------------------------------------------------------------------


def test_a_damaged_or_incomplete_checkpoint_is_named_with_the_remedy(tmp_path, capsys):
    run = tmp_path / "sft"
    args = [*SFT, "--out", str(run)]
    assert cli(args, capsys)[0] == 0
    state, weights = run / "checkpoint" / "trainer_state.pt", run / "checkpoint" / "model.safetensors"
    saved = {state: state.read_bytes(), weights: weights.read_bytes()}
    for path, damaged in ((state, saved[state][: len(saved[state]) // 2]), (state, b"garbage"),
                          (weights, saved[weights][:1000])):
        path.write_bytes(damaged)
        code, err = cli(args, capsys)
        assert code == 2 and str(path) in err and "--restart" in err, err
        path.write_bytes(saved[path])
    assert cli(args, capsys)[0] == 0  # repaired: resumes
    state.unlink()
    code, err = cli(args, capsys)
    assert code == 2 and f"{state} is missing" in err and "--restart" in err
    assert not (run / "checkpoint" / "trainer_state.pt").exists()  # not silently trained over
    assert cli([*args, "--restart"], capsys)[0] == 0
    assert state.exists() and json.loads((run / "results.json").read_text())["sft"]["steps"] == 4


# 7 -------------------------------------------------------------------------------------------------


def test_a_policy_is_refused_on_another_catalogue_or_representation(tmp_path, capsys):
    catalogue = {"num_items": 200, "num_users": 150}
    task = make_task("RecGen-Synthetic-v0", "train", {"representation": "title", "dataset_kwargs": catalogue})
    folder = tmp_path / "policy"
    policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
    policy.save_pretrained(folder)
    recorded = json.loads((folder / "recgym_policy.json").read_text())["catalogue"]
    assert (recorded["items"], recorded["representation"], len(recorded["sha256"])) == (200, "title", 64)
    assert cli(["eval", *SMALL, "--policy", str(folder), "--max-requests", "4"], capsys)[0] == 0  # its own
    for other, items in ((["--dataset-set", "seed=1"], 200), (["--dataset-set", "num_items=300"], 300),
                         (["--dataset-set", "num_items=196"], 196)):
        code, err = cli(["eval", *SMALL, *other, "--policy", str(folder), "--max-requests", "4"], capsys)
        assert code == 2, err
        assert f"--policy {folder} was trained on another catalogue (200 items" in err
        assert f"than the env's ({items} items" in err
    code, err = cli(["train", *SMALL, "--dataset-set", "seed=1", "--sft", str(folder), "--steps", "1",
                     "--out", str(tmp_path / "rl")], capsys)
    assert code == 2 and f"--sft {folder} was trained on another catalogue" in err
    code, err = cli(["eval", *SMALL, "--representation", "sid", "--policy", str(folder)], capsys)
    assert code == 2 and "--representation sid" in err and "'title'" in err
    # The library: from_pretrained with another catalogue's items, evaluate on a task over another one.
    other = make_synthetic(num_items=200, num_users=150, seed=1)
    other_task = make_task("RecGen-Synthetic-v0", "test", {"representation": "title",
                                                          "dataset_kwargs": {**catalogue, "seed": 1}})
    with pytest.raises(ValueError, match="another catalogue"):
        LLMPolicy.from_pretrained(folder, items=other_task.items)
    with pytest.raises(ValueError, match="another catalogue"):
        evaluate(policy, RecGenTask(other, split="test", tokenizer=policy.items), beam=5, max_requests=4)
    assert np.array_equal(LLMPolicy.from_pretrained(folder).items.sequences[3], policy.items.sequences[3])


# 8 -------------------------------------------------------------------------------------------------


def test_the_command_line_prints_what_people_read(tmp_path, capfd):
    assert main([*SFT, "--out", str(tmp_path / "sft")]) == 0
    out, err = capfd.readouterr()
    assert "sft:" in err and "| sft (tiny) |" in out  # our own bar and table
    noises = ("Loading weights", "Writing model shards", "past_key_values", "FutureWarning", "warnings.warn")
    for noise in noises:
        assert noise not in out + err, noise
    # Hints speak the command line, not Python, and never suggest downloading a path.
    plain = tmp_path / "plain"
    plain.mkdir()
    code, err = cli(["eval", *SMALL, "--policy", str(plain)], capfd)
    assert code == 2 and "items=ItemTokenizer" not in err and "recgym_policy.json" in err
    x = str(tmp_path / "x")
    code, err = cli(["sft", "--dataset", str(tmp_path / "no-such-folder"), "--out", x], capfd)
    assert code == 2 and "no such folder" in err and "recgym data download" not in err
    for command in (["data", "describe", "games"], ["sft", "--dataset", "games", "--out", x]):
        code, err = cli(command, capfd)
        assert code == 2 and "run `recgym data download games`" in err and "download=True" not in err, err
    code, err = cli(["sft", "--dataset", "games-lcrec", "--out", x], capfd)
    assert code == 2 and "--dataset path/to/games-lcrec" in err and "load()" not in err
    assert "run `recgym data download games-lcrec`" in err  # prepared folders download from their pins


# Issue 26: saved files, caches, folders and plug-ins ------------------------------------------------


def _saved_policy(tmp_path: Path, name: str = "policy") -> Path:
    """A tiny policy over SMALL's catalogue, saved by recgym."""
    task = make_task("RecGen-Synthetic-v0", "train", {"representation": "sid",
                                                      "dataset_kwargs": {"num_items": 200, "num_users": 150}})
    return LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu").save_pretrained(tmp_path / name)


EVAL = ["eval", "--representation", "sid", *SMALL, "--max-requests", "4"]


def test_a_missing_file_in_a_saved_folder_is_named_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    from transformers import Qwen2ForCausalLM

    real = Qwen2ForCausalLM.__init__

    def small_only(self, config, *args, **kwargs):  # a folder without config.json built a 7.7B default
        assert config.hidden_size <= 1024, f"a {config.hidden_size}-wide model was built"
        real(self, config, *args, **kwargs)

    monkeypatch.setattr(Qwen2ForCausalLM, "__init__", small_only)
    run = tmp_path / "sft"
    args = [*SFT, "--out", str(run)]
    assert cli(args, capsys)[0] == 0
    # A checkpoint (resumed from) and a saved policy (--policy): each file it reads.
    for path in (run / "checkpoint" / "config.json", run / "checkpoint" / "model.safetensors"):
        saved = path.read_bytes()
        path.unlink()
        code, err = cli(args, capsys)
        assert code == 2 and f"{path} is missing" in err and "--restart" in err, err
        path.write_bytes(saved)
    best = run / "best"
    for name in ("config.json", "model.safetensors", "recgym_items.json", "tokenizer.json", "catalogue.npz"):
        path = best / name
        saved = path.read_bytes()
        path.unlink()
        code, err = cli([*EVAL, "--policy", str(best)], capsys)
        assert code == 2 and f"{path} is missing" in err and "save the policy again" in err, (name, err)
        path.write_bytes(saved)
    assert cli([*EVAL, "--policy", str(best)], capsys)[0] == 0  # whole again


def test_a_policy_file_changed_after_saving_is_refused(tmp_path, capsys):
    import hashlib

    folder = _saved_policy(tmp_path)
    recorded = json.loads((folder / "recgym_policy.json").read_text())
    config = folder / "config.json"
    assert recorded["sha256"]["config.json"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert "model.safetensors" in recorded["sha256"]
    assert cli([*EVAL, "--policy", str(folder)], capsys)[0] == 0
    weights = folder / "model.safetensors"
    original = {config: config.read_bytes(), weights: weights.read_bytes()}
    tampered = json.loads(original[config])
    tampered["hidden_act"] = "gelu"
    flipped = bytearray(original[weights])
    flipped[-5] ^= 0xFF  # one weight's bytes, same size
    for path, changed in ((config, json.dumps(tampered).encode()), (weights, bytes(flipped))):
        path.write_bytes(changed)
        code, err = cli([*EVAL, "--policy", str(folder)], capsys)
        assert code == 2 and f"{path} was changed after the policy was saved" in err, err
        with pytest.raises(RuntimeError, match="changed after the policy was saved"):
            LLMPolicy.from_pretrained(folder)
        path.write_bytes(original[path])
    # A folder saved before the fingerprint existed (no hashes recorded) still loads.
    del recorded["sha256"]
    (folder / "recgym_policy.json").write_text(json.dumps(recorded))
    assert cli([*EVAL, "--policy", str(folder)], capsys)[0] == 0


def test_a_damaged_policy_config_is_named(tmp_path, capsys):
    folder = _saved_policy(tmp_path)
    config = folder / "config.json"
    original = config.read_text()
    recorded = json.loads((folder / "recgym_policy.json").read_text())
    recorded.pop("sha256", None)  # as saved before fingerprints: the checks below do not rest on them
    (folder / "recgym_policy.json").write_text(json.dumps(recorded))
    config.write_text(original[: len(original) // 2])
    code, err = cli([*EVAL, "--policy", str(folder)], capsys)
    assert code == 2 and f"{config} is damaged" in err and "save the policy again" in err, err
    for more in ({"num_hidden_layers": 3}, {"num_hidden_layers": 3, "layer_types": ["full_attention"] * 3},
                 {"intermediate_size": 100}):
        config.write_text(json.dumps({**json.loads(original), **more}))
        code, err = cli([*EVAL, "--policy", str(folder)], capsys)
        assert code == 2 and str(config) in err and "save the policy again" in err, (more, err)
        assert "model.safetensors" in err or "not a valid" in err, err


def test_damaged_caches_are_rebuilt_with_a_warning_and_damaged_policy_files_are_named(tmp_path, capsys):
    from agents.model.encoders import TextEncoder, embed_texts
    from recgym.data import DataWarning

    options = {"representation": "sid", "dataset_kwargs": {"num_items": 200, "num_users": 150}}
    task = make_task("RecGen-Synthetic-v0", "train", options)
    [cached] = (tmp_path / "cache" / "tokenizers").iterdir()
    tokenizer = (cached / "tokenizer.json").read_bytes()
    for name, damaged in (("tokenizer.json", tokenizer[: len(tokenizer) // 2]), ("tokenizer.json", b""),
                          ("recgym_items.json", b"")):
        (cached / name).write_bytes(damaged)
        with pytest.warns(DataWarning, match=re.escape(str(cached / name))):
            again = make_task("RecGen-Synthetic-v0", "train", options)
        assert all(np.array_equal(a, b) for a, b in zip(again.items.sequences, task.items.sequences))
        json.loads((cached / name).read_text())  # rebuilt whole
    assert make_task("RecGen-Synthetic-v0", "train", options).items.vocab_size == task.items.vocab_size

    class Lengths(TextEncoder):
        name = "lengths"

        def fingerprint(self):
            return "lengths-v1"

        def encode(self, texts, *, batch_size=64, progress=True):
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    texts = [f"item {i}" * (i + 1) for i in range(50)]
    embeddings = embed_texts(texts, Lengths(), cache_dir=tmp_path / "emb")
    [npy] = (tmp_path / "emb").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    with pytest.warns(DataWarning, match=re.escape(str(npy))):
        assert np.array_equal(embed_texts(texts, Lengths(), cache_dir=tmp_path / "emb"), embeddings)
    assert np.array_equal(np.load(npy), embeddings)
    # A policy folder is the user's: its files cannot be rebuilt, so they are named.
    folder = _saved_policy(tmp_path)
    for name in ("tokenizer.json", "recgym_items.json"):
        path = folder / name
        saved = path.read_bytes()
        path.write_bytes(saved[: len(saved) // 3])
        code, err = cli([*EVAL, "--policy", str(folder)], capsys)
        assert code == 2 and f"{path} is damaged" in err and "save the policy again" in err, (name, err)
        path.write_bytes(saved)


def test_a_subset_selected_on_another_dataset_is_refused(tmp_path, capsys):
    from agents.build import subset_sampler

    selection = tmp_path / "random.json"
    assert cli(["select", "--representation", "sid", *SMALL, "--method", "random", "--size", "7",
                "--pool", "40", "--out", str(selection)], capsys)[0] == 0
    recorded = json.loads(selection.read_text())
    assert recorded["dataset"] == "synthetic" and recorded["catalogue"]["items"] == 200
    out = tmp_path / "train"
    other = ["--dataset-set", "seed=1"]
    code, err = cli([*TRAIN, *other, "--subset", str(selection), "--out", str(out)], capsys)
    assert code == 2, err
    assert f"--subset {selection} was selected on another catalogue (dataset synthetic, 200 items" in err
    assert "recgym select" in err
    assert not (out / "sft").exists()  # refused before any training
    task = make_task("RecGen-Synthetic-v0", "train", {"representation": "sid",
                                                      "dataset_kwargs": {"num_items": 200, "num_users": 150}})
    sampler, info = subset_sampler(str(selection), task.num_requests, 3, 0, task=task)  # its own dataset
    assert info["requests"] == 7
    legacy = tmp_path / "legacy.json"  # written before selections recorded their catalogue
    legacy.write_text(json.dumps({k: v for k, v in recorded.items() if k not in ("dataset", "catalogue")}))
    with pytest.warns(UserWarning, match=re.escape(f"--subset {legacy} does not record")):
        subset_sampler(str(legacy), task.num_requests, 3, 0, task=task)


def test_a_full_disk_while_checkpointing_names_the_folder_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                       monkeypatch):
    import errno
    from types import SimpleNamespace

    import agents.training.checkpoint
    from agents.training.checkpoint import load_trainer_state

    run = tmp_path / "sft"
    args = [*SFT, "--out", str(run)]
    real = torch.save
    for failure in (OSError(errno.ENOSPC, "No space left on device"),
                    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4242")):
        def full(obj, f, *a, failure=failure, calls=[0], **k):  # noqa: B006 (one counter per failure)
            if Path(f).parent.name == "checkpoint.tmp":
                calls[0] += 1
                if calls[0] == 2:  # the second checkpoint (step 4) finds the disk full
                    Path(f).write_bytes(b"PK\x03\x04")
                    raise failure
            return real(obj, f, *a, **k)

        with monkeypatch.context() as m:
            m.setattr(agents.training.checkpoint.torch, "save", full)
            m.setattr(agents.training.checkpoint.shutil, "disk_usage",
                      lambda p: SimpleNamespace(total=10**9, free=0))
            code, err = cli([*args, "--restart"], capsys)
        assert code == 2, err
        assert f"no space left on {run}" in err and "Traceback" not in err, err
        assert load_trainer_state(run / "checkpoint")["state"]["step"] == 2  # the previous one, intact
        assert not (run / "checkpoint.tmp").exists()
    assert cli(args, capsys)[0] == 0  # space again: resumes from step 2
    assert json.loads((run / "results.json").read_text())["sft"]["steps"] == 4


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import errno
    import os

    import agents.build

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before --out was checked")

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_open = os.open

    def denied(path, *args, **kwargs):  # a read-only folder (root may write anywhere, so it is simulated)
        if str(path).startswith(str(readonly)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(agents.build, "make_task", no_data)
    monkeypatch.setattr(os, "open", denied)
    for out in (afile / "sub", afile, readonly):
        for command in (SFT, TRAIN):
            code, err = cli([*command, "--out", str(out)], capsys)
            assert code == 2 and f"--out {out}" in err and "Traceback" not in err, (out, err)
            assert "writable" in err, err


def test_a_plugin_loss_of_the_wrong_type_names_the_plugin(tmp_path, capsys):
    plugin = tmp_path / "float_loss.py"
    plugin.write_text(
        "from agents.learners import learner_names, register_learner\n"
        "from agents.learners.grpo import GRPO\n\n\n"
        "class FloatLoss(GRPO):\n"
        "    name = 'floatloss'\n\n"
        "    def loss(self, policy, batch):\n"
        "        loss, stats = super().loss(policy, batch)\n"
        "        return float(loss), stats\n\n\n"
        "if 'floatloss' not in learner_names():\n"
        "    register_learner('floatloss', FloatLoss.from_settings)\n")
    code, err = cli([*TRAIN, "--plugin", str(plugin), "--agent", "floatloss", "--out", str(tmp_path / "rl")],
                    capsys)
    assert code == 2, err
    assert "learner 'floatloss'" in err and "loss() must return (a scalar torch.Tensor" in err
    assert "got (float, dict)" in err, err
