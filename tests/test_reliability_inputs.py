"""The reliability suite, round 2 (issue 26): bad input gives a clear error before any work, or a
documented meaning; never a silent wrong result, a late error or a Python message.

One test per case, numbered as in the issue (cases 1, 2, 5, 8 and 11 are in tests/test_reliability.py;
tests/test_flags.py runs every numeric flag through 0, -1, nan, inf and 1e9). Every run here is tiny.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from agents.cli import main
from agents.model.policy import LLMPolicy
from recgym.data import make_synthetic
from recgym.data.dataset import Catalogue, Dataset
from recgym.envs import RecGenTask

SMALL = ["--dataset-set", "num_items=200", "--dataset-set", "num_users=150"]
SFT = ["sft", "--representation", "sid", *SMALL, "--max-steps", "2", "--batch-size", "16",
       "--eval-every", "1", "--test-requests", "4"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RECGYM_DATA_PATH", raising=False)


def cli(argv, capture):
    """``(exit code, stderr)`` of ``recgym argv``; argparse's own errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capture.readouterr().err


def refused(code, err, flag, value):
    """A clear refusal: exit 2, ``error:``, the flag and the value (``recgym: error: --flag value: ...`` or
    argparse's ``error: argument --flag: ... 'value'``), no traceback."""
    return code == 2 and "error:" in err and flag in err and value in err and "Traceback" not in err


class WorkStarted(Exception):
    """Raised by the stand-ins of the heavy steps: the arguments were accepted."""


def no_work(monkeypatch, *targets):
    """Make each ``(module, name)`` raise :class:`WorkStarted` when called."""
    def started(*args, **kwargs):
        raise WorkStarted

    for module, name in targets:
        monkeypatch.setattr(module, name, started)


@pytest.fixture
def policy_dir(tmp_path):
    """A tiny saved policy on the SMALL catalogue (SIDs)."""
    from agents.build import make_task

    task = make_task("RecGen-Synthetic-v0", "train", {"representation": "sid",
                                                      "dataset_kwargs": {"num_items": 200, "num_users": 150}})
    folder = tmp_path / "policy"
    LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu").save_pretrained(folder)
    return folder


# 3 -------------------------------------------------------------------------------------------------


def test_training_on_the_valid_split_validates_nothing_and_says_so(tmp_path, capsys):
    from agents.training.tracking import MetricLogger

    out = tmp_path / "sft"
    code, err = cli([*SFT, "--train-split", "valid", "--out", str(out)], capsys)
    assert code == 0, err
    assert "--train-split valid" in err and "nothing is validated" in err
    assert not any(key.startswith("valid/") for r in MetricLogger.read(out) for key in r)
    results = json.loads((out / "results.json").read_text())
    assert results["validation"].startswith("none")
    assert results["sft"]["valid_history"] == []
    # train: its SFT stage and its RL stage alike.
    run = tmp_path / "train"
    code, err = cli(["train", "--representation", "sid", *SMALL, "--train-split", "valid", "--sft-steps", "1",
                     "--sft-batch-size", "8", "--steps", "1", "--requests-per-step", "2", "--group-size", "2",
                     "--agent", "grpo", "--eval-every", "1", "--test-requests", "4", "--out", str(run)],
                    capsys)
    assert code == 0, err
    assert "nothing is validated" in err
    for stage in ("sft", "rl"):
        assert not any(key.startswith("valid/") for r in MetricLogger.read(run / stage) for key in r), stage


# 4 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--mu", "nan"), ("--alpha", "nan"), ("--sigma", "nan"),
                                        ("--mu", "inf"), ("--alpha", "inf"), ("--sigma", "inf"),
                                        ("--alpha", "-1"), ("--mu", "2")])
def test_a_non_finite_or_out_of_range_minirec_knob_is_refused_before_any_work(flag, value, tmp_path, capsys,
                                                                              monkeypatch):
    import agents.build
    import agents.minirec

    no_work(monkeypatch, (agents.minirec, "train_proxy"), (agents.minirec, "proxy_rollouts"))
    if value != "2":  # a value out of any reward range is refused before data is loaded
        no_work(monkeypatch, (agents.build, "make_task"))
    code, err = cli(["select", *SMALL, "--method", "random", f"{flag}={value}",
                     "--out", str(tmp_path / "s.json")], capsys)
    assert refused(code, err, flag, value), err
    assert not (tmp_path / "s.json").exists()
    # The library refuses it too, before the proxy is trained.
    task = RecGenTask(make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3),
                      representation="sid", vocab_size=400)
    with pytest.raises(ValueError, match=flag[2:]):
        agents.minirec.run_selection(object(), task, np.arange(10), "learnability", 3,
                                     **{flag[2:]: float(value)})


# 6 -------------------------------------------------------------------------------------------------


def test_items_that_share_a_title_are_warned_about_once_when_the_tree_is_built():
    from agents.training.evaluate import evaluate

    base = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    titles = list(base.catalogue.titles)
    titles[1] = titles[2] = titles[0]  # 3 items with one title
    titles[10] = titles[11] = "Same Title"
    clash = Dataset(base.name, Catalogue(60, titles=titles, sids=base.catalogue.sids), base.train, base.valid,
                    base.test)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = RecGenTask(clash, split="train", representation="title", vocab_size=400)
        test = RecGenTask(clash, split="test", tokenizer=train.items)
    said = [str(w.message) for w in caught if "share their title" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("5 of 60 items share their title with another item (2 titles")
    assert "hit" in said[0]
    # The meaning the warning announces: every item of a title is a hit when the title is generated.
    every = ["One Title"] * 60
    same = Dataset(base.name, Catalogue(60, titles=every, sids=base.catalogue.sids), base.train, base.valid,
                   base.test)
    with pytest.warns(UserWarning, match="60 of 60 items share their title"):
        one = RecGenTask(same, split="test", representation="title", vocab_size=400)
    policy = LLMPolicy.from_config("tiny", one.items, seed=0, device="cpu")
    assert evaluate(policy, one, beam=1, max_requests=8, progress=False)["HR@1"] == 1.0
    assert test.tree.num_items == 60


# 7 -------------------------------------------------------------------------------------------------


def test_sft_steps_zero_is_documented_and_negative_step_counts_are_refused(tmp_path, capsys, monkeypatch):
    import agents.build
    from agents.cli import build_parser

    no_work(monkeypatch, (agents.build, "make_task"))
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if "--sft-steps" in a.option_strings)
    assert "0: every epoch" in train.help
    code, err = cli(["train", "--sft-steps=-1", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "--sft-steps -1" in err and "0: every epoch" in err, err
    with pytest.raises(WorkStarted):  # 0 passes the checks: every epoch
        main(["train", "--sft-steps", "0", "--out", str(tmp_path / "t")])
    code, err = cli(["select", "--proxy-steps=-1", "--method", "random", "--out", str(tmp_path / "s.json")],
                    capsys)
    assert refused(code, err, "--proxy-steps", "-1") and "0: the policy as is" in err, err


# 9 -------------------------------------------------------------------------------------------------


def test_settings_and_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch, policy_dir):
    import agents.build
    import agents.minirec
    import agents.model.encoders
    import agents.training.evaluate

    no_work(monkeypatch, (agents.model.encoders, "_embed"), (agents.minirec, "train_proxy"),
            (agents.minirec, "proxy_rollouts"), (agents.training.evaluate, "evaluate"),
            (agents.training.evaluate, "evaluate_ranker"))
    sids = ["data", "sids", "synthetic", "--set", "num_items=200", "--set", "num_users=150",
            "--out", str(tmp_path / "index.json")]
    for flag, value in (("--levels", "0"), ("--codes", "0"), ("--levels", "26"), ("--codes", "201")):
        code, err = cli([*sids, flag, value], capsys)
        assert refused(code, err, flag, value), (flag, value, err)
    with pytest.raises(WorkStarted):  # sound settings reach the encoder
        main([*sids, "--levels", "2", "--codes", "200"])
    small = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3)
    for settings, words in (({"levels": 0}, "levels=0"), ({"levels": 26}, "levels=26"),
                            ({"codes": 0}, "codes=0"), ({"codes": 61}, "codes=61")):
        with pytest.raises(ValueError, match=words):  # the library too, before encoding
            agents.model.encoders.build_sids_for_dataset(small, tmp_path / "i.json", **settings)
    select = ["select", *SMALL, "--policy", str(policy_dir), "--method", "minirec"]
    for flag, value in (("--sigma", "-1"), ("--group", "0"), ("--rollouts", "0"), ("--size", "1000000")):
        code, err = cli([*select, f"{flag}={value}", "--out", str(tmp_path / "s.json")], capsys)
        assert refused(code, err, flag, value), (flag, value, err)
    # Output files: a folder, a file's "subfolder", a place nothing can be written to.
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    for out, words in ((folder, "is a folder"), (afile / "sub.json", "is a file, not a folder"),
                       (Path("/proc/recgym-test/x.json"), "cannot write")):
        for command in (["eval", *SMALL, "--representation", "sid", "--policy", str(policy_dir)],
                        ["eval", *SMALL, "--agent", "popularity"], [*select, "--proxy-steps", "0"]):
            code, err = cli([*command, "--out", str(out)], capsys)
            assert code == 2 and f"--out {out}" in err and words in err, (command, out, err)
    assert sorted(p.name for p in folder.iterdir()) == []  # no .tmp left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


# 10 ------------------------------------------------------------------------------------------------


def test_messages_name_the_flag_not_the_python_argument(tmp_path, capsys, monkeypatch, policy_dir):
    import agents.bench.runner
    import agents.minirec

    no_work(monkeypatch, (agents.minirec, "train_proxy"), (agents.minirec, "proxy_rollouts"),
            (agents.bench.runner, "_run_bench"))
    out = str(tmp_path / "s.json")
    select = ["select", *SMALL, "--policy", str(policy_dir)]
    for argv, flag, value, python in (
        ([*select, "--rollouts", "0"], "--rollouts", "0", "num_envs"),
        (["eval", "--seed=-1", "--agent", "popularity"], "--seed", "-1", "non-negative integer"),
        ([*select, "--pool=-1"], "--pool", "-1", "negative dimensions"),
        ([*select, "--size", "nan"], "--size", "nan", "invalid literal"),
        ([*select, "--size", "0"], "--size", "0", "invalid literal"),
        (["bench", "--rollouts", "0", "--agents", "sft,grpo"], "--rollouts", "0", "riser_group"),
    ):
        code, err = cli([*argv, "--out", out], capsys)
        assert refused(code, err, flag, value) and python not in err, (argv, err)
    code, err = cli(["data", "download", "nosuch"], capsys)
    assert code == 2 and "nosuch" in err and "--dataset" not in err, err
    # --rollouts below RISER's group without RISER in the bench: the group is not RISER's concern.
    with pytest.raises(WorkStarted):
        main(["bench", "--rollouts", "4", "--agents", "sft,grpo", "--out", str(tmp_path / "b")])
    code, err = cli(["bench", "--rollouts", "4", "--agents", "sft,riser", "--out", str(tmp_path / "b")],
                    capsys)
    assert code == 2 and "--rollouts 4" in err and "riser_group" in err and "--preset-set" in err, err
    # --dataset replaces the preset's dataset: the preset's synthetic options do not follow it.
    seen = {}

    def capture(preset, agents, seeds, out, task_overrides, *rest):
        seen["task"] = {**preset.task, **task_overrides}
        raise WorkStarted

    monkeypatch.setattr(agents.bench.runner, "_run_bench", capture)
    with pytest.raises(WorkStarted):
        main(["bench", "--preset", "ci", "--dataset", "office-d3", "--agents", "popularity",
              "--out", str(tmp_path / "b")])
    assert seen["task"]["dataset"] == "office-d3" and "dataset_kwargs" not in seen["task"]
    assert "dataset_kwargs" in capsys.readouterr().err  # said, not silent
    with pytest.raises(WorkStarted):  # the preset's own dataset keeps them
        main(["bench", "--preset", "ci", "--agents", "popularity", "--out", str(tmp_path / "b")])
    assert seen["task"]["dataset_kwargs"] == {"num_items": 300, "num_users": 400}


# 12 ------------------------------------------------------------------------------------------------


def test_absurd_sizes_are_refused_before_any_work_naming_the_flag(tmp_path, capsys, monkeypatch, policy_dir):
    import time

    import agents.bench.runner
    import agents.minirec
    import agents.model.encoders
    import agents.training.rl
    import agents.training.sft

    no_work(monkeypatch, (agents.training.sft, "train_sft"), (agents.training.rl, "train_rl"),
            (agents.minirec, "train_proxy"), (agents.minirec, "proxy_rollouts"),
            (agents.bench.runner, "_run_bench"), (agents.model.encoders, "_embed"))
    big = "1000000000"
    train = ["train", *SMALL, "--representation", "sid", "--out", str(tmp_path / "t")]
    for argv, flag in (
        ([*train, "--requests-per-step", big], "--requests-per-step"),
        ([*train, "--agent", "riser", "--oversample", big], "--oversample"),
        ([*train, "--agent", "grpo", "--group-size", big], "--group-size"),
        ([*train, "--lora-r", big], "--lora-r"),
        (["sft", *SMALL, "--lora-r", big, "--out", str(tmp_path / "s")], "--lora-r"),
        (["select", *SMALL, "--policy", str(policy_dir), "--rollouts", big,
          "--out", str(tmp_path / "x.json")], "--rollouts"),
        (["bench", "--rollouts", big, "--out", str(tmp_path / "b")], "--rollouts"),
        (["bench", "--requests-per-step", big, "--out", str(tmp_path / "b")], "--requests-per-step"),
        (["data", "describe", "synthetic", "--set", "num_items=200", "--set", "num_users=150",
          "--max-history", big], "max_history"),
        (["sft", *SMALL, "--set", f"max_history={big}", "--out", str(tmp_path / "s")], "max_history"),
        (["data", "sids", "synthetic", "--set", "num_items=200", "--set", "num_users=150", "--levels", big,
          "--out", str(tmp_path / "i.json")], "--levels"),
    ):
        tick = time.time()
        code, err = cli(argv, capsys)
        assert refused(code, err, flag, big), (argv, err)
        assert time.time() - tick < 20, argv


# 13 ------------------------------------------------------------------------------------------------


def test_a_bench_rerun_reuses_the_finished_tests_of_the_same_settings(tmp_path, monkeypatch):
    import agents.bench.runner

    out = tmp_path / "bench"
    small = ["bench", "--preset", "ci", "--agents", "popularity,sft,grpo", "--seeds", "0", "--sft-steps", "2",
             "--rl-steps", "1", "--requests-per-step", "2", "--rollouts", "2", "--test-requests", "6",
             "--eval-requests", "6", "--quiet", "--out", str(out)]
    assert main(small) == 0
    first = json.loads((out / "results.json").read_text())
    with monkeypatch.context() as m:  # the rerun tests nothing again: every record is reused
        runner = agents.bench.runner
        no_work(m, (runner, "_test"), (runner, "_run_classic"), (runner, "_run_rl"))
        assert main(small) == 0
        again = json.loads((out / "results.json").read_text())
        for name in ("popularity", "sft", "grpo"):
            assert again["agents"][name]["runs"]["0"] == first["agents"][name]["runs"]["0"], name
        # Other settings of a row's test: that row (and only what changed) runs again.
        with pytest.raises(WorkStarted):
            main([*small, "--test-requests", "5"])
    # A rerun with --restart starts over and tests again.
    with monkeypatch.context() as m:
        no_work(m, (agents.bench.runner, "_run_classic"))
        with pytest.raises(WorkStarted):
            main([*small, "--restart"])
