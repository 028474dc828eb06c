"""The flag matrix (issue 26): every integer and float option of every command, through 0, -1, nan,
inf and 1e9 (as ``1e9`` and as ``1000000000``).

Each value is either refused with a clear error that names the option (``error:``, exit 2, no
traceback), or it has a meaning documented in :data:`ACCEPTED`; the heavy steps (training, proxy
rollouts, evaluation, encoding, the bench's runs) are stand-ins that stop the command once its
arguments passed every check, so nothing trains. A value accepted but not documented, or documented
but refused, fails the test; so does a new numeric option until it is listed.
"""

import argparse
import json

import pytest

from agents.cli import build_parser, main

VALUES = ("0", "-1", "nan", "inf", "1e9", "1000000000")
SMALL = ["--dataset-set", "num_items=200", "--dataset-set", "num_users=150", "--representation", "sid"]
DATA = ["synthetic", "--set", "num_items=200", "--set", "num_users=150"]
BIG = ("1e9", "1000000000")  # float options read both as 1e9; integer ones refuse "1e9" (not an int)

# What an accepted value means, per option (all commands that have it) and value.
_EVERY_EPOCH = "an upper bound: training stops at the end of its epochs, or earlier by patience"
_ALL = "more than the split holds: every request of it"
_WIDE = "a beam wider than the catalogue: every item is searched (the metrics' K stop at 50)"
_SPLIT = "a batch holds at most the whole split (its memory is checked on that)"
_HEAVY = "any finite alpha: the history penalty outweighs the NLL (each step's gradient is clipped)"
_DIVERGE = "any finite value; a run that blows up stops at the first non-finite loss, naming the option"
ACCEPTED: dict[str, dict[str, str]] = {
    "--seed": {"0": "a seed", "1000000000": "a seed (0 .. 2**32 - 1)"},
    "--lora-r": {"0": "no LoRA (help: '0: no LoRA')"},
    "--lora-alpha": {v: "the LoRA scale alpha / r (unused without --lora-r)" for v in BIG},
    "--lora-dropout": {"0": "no dropout on the LoRA branch"},
    "--epochs": {"1000000000": _EVERY_EPOCH},
    "--sft-epochs": {"1000000000": _EVERY_EPOCH},
    "--batch-size": {"1000000000": _SPLIT},
    "--sft-batch-size": {"1000000000": _SPLIT},
    "--lr": {v: _DIVERGE for v in BIG},
    "--sft-lr": {v: _DIVERGE for v in BIG},
    "--weight-decay": {"0": "no weight decay", **{v: _DIVERGE for v in BIG}},
    "--sft-weight-decay": {"0": "no weight decay", **{v: _DIVERGE for v in BIG}},
    "--warmup-steps": {"0": "no warm-up", "1000000000": "a warm-up longer than the run (the rate stays low)"},
    "--sft-warmup-steps": {"0": "no warm-up", "1000000000": "a warm-up longer than the run"},
    "--grad-clip": {v: "a clip no gradient reaches: no clipping" for v in BIG},
    "--eval-every": {"0": "SFT: once an epoch; RL: at the start and the end (help)",
                     "1000000000": "validation only at the end"},
    "--sft-eval-every": {"0": "once an epoch (help)", "1000000000": "validation only at the end"},
    "--eval-requests": {"1000000000": _ALL},
    "--beam": {"1000000000": _WIDE},
    "--test-beam": {"1000000000": _WIDE},
    "--patience": {"0": "never stop early (help)", "1000000000": "never stop early"},
    "--max-steps": {"1000000000": _EVERY_EPOCH},
    "--sft-steps": {"0": "train: every epoch (help: '0: every epoch')", "1000000000": _EVERY_EPOCH},
    "--unlikelihood": {"0": "plain NLL (help: '0: plain NLL')", **{v: _HEAVY for v in BIG}},
    "--sft-unlikelihood": {"0": "plain NLL (help: '0: plain NLL')", **{v: _HEAVY for v in BIG}},
    "--dropout": {"0": "no dropout (help)"},
    "--sft-dropout": {"0": "no dropout (help)"},
    "--test-requests": {"1000000000": _ALL},
    "--max-requests": {"1000000000": _ALL},
    "--steps": {"1000000000": "an upper bound on RL steps (patience may stop earlier)"},
    "--mu": {"1000000000": "train: optimizer passes over each batch (it only takes long)",
             "0": "select: the r_bar of highest learnability, within the rewards' range [0, 1]"},
    "--minibatches": {"1000000000": "at most one group per minibatch (min(minibatches, groups))"},
    "--pool": {"1000000000": _ALL},
    "--alpha": {"0": "learnability off: representativeness alone",
                **{v: "a weight of learnability" for v in BIG}},
    "--sigma": {"0": "the std of r_bar over the pool (help)", **{v: "a flat learnability" for v in BIG}},
    "--group": {"1000000000": "one curriculum group (more than the selection)"},
    "--proxy-steps": {"0": "the policy as is (help)",
                      "1000000000": "GRPO steps of the proxy (it only takes long)"},
    "--rl-steps": {"1000000000": "RL steps of the bench (it only takes long)"},
    "--sasrec-epochs": {"1000000000": "an upper bound: SASRec stops early on valid"},
}
# Options that only one command accepts a value for (the same name means another thing elsewhere).
ONLY = {("--mu", "1000000000"): "train", ("--mu", "0"): "select", ("--sft-steps", "0"): "train"}


class WorkStarted(Exception):
    """Raised by the stand-ins of the heavy steps: the command's arguments were accepted."""


def commands(policy_dir, tmp):
    """The smallest command line of each command (its required arguments, a tiny catalogue)."""
    return {
        ("data", "describe"): ["data", "describe", *DATA],
        ("data", "download"): ["data", "download", *DATA],
        ("data", "sids"): ["data", "sids", *DATA, "--codes", "16", "--out", str(tmp / "index.json")],
        ("sft",): ["sft", *SMALL, "--out", str(tmp / "sft")],
        ("train",): ["train", *SMALL, "--out", str(tmp / "train")],
        ("select",): ["select", *SMALL, "--policy", str(policy_dir), "--out", str(tmp / "selection.json")],
        ("eval",): ["eval", *SMALL, "--policy", str(policy_dir)],
        ("bench",): ["bench", "--agents", "popularity,sft,grpo", "--out", str(tmp / "bench")],
    }


def numeric_options(parser=None, path=()):
    """(command path, option) of every option whose value is a number."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_options(sub, (*path, name))
        elif action.option_strings and getattr(action.type, "__name__", "") in (
                "int", "float", "_positive_int", "_subset_size"):
            yield path, action.option_strings[-1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    tmp = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECGYM_DATA_DIR", str(data))
    mp.delenv("RECGYM_DATA_PATH", raising=False)
    import agents.bench.runner
    import agents.build
    import agents.minirec
    import agents.model.encoders
    import agents.training.evaluate
    import agents.training.rl
    import agents.training.sft
    from agents.model.policy import LLMPolicy

    task = agents.build.make_task("RecGen-Synthetic-v0", "train", {
        "representation": "sid", "dataset_kwargs": {"num_items": 200, "num_users": 150}})
    policy_dir = tmp / "policy"
    LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu").save_pretrained(policy_dir)

    def started(*args, **kwargs):
        raise WorkStarted

    for module, name in ((agents.training.sft, "train_sft"), (agents.training.rl, "train_rl"),
                         (agents.training.evaluate, "evaluate"),
                         (agents.training.evaluate, "evaluate_ranker"), (agents.minirec, "train_proxy"),
                         (agents.minirec, "proxy_rollouts"), (agents.minirec, "request_embeddings"),
                         (agents.bench.runner, "_run_bench"), (agents.model.encoders, "_embed")):
        mp.setattr(module, name, started)
    real, built = agents.build.make_task, {}

    def make_task(env_id, split, overrides, tokenizer=None, source="the policy"):  # tasks once per setting
        key = (env_id, split, json.dumps(overrides, sort_keys=True, default=str), id(tokenizer)
               if tokenizer is not None and not isinstance(tokenizer, str) else tokenizer)
        if key not in built:
            built[key] = real(env_id, split, overrides, tokenizer=tokenizer, source=source)
        return built[key]

    mp.setattr(agents.build, "make_task", make_task)
    yield commands(policy_dir, tmp)
    mp.undo()


def outcome(argv, capsys):
    """``("refused", stderr)``, ``("accepted", stderr)`` or ``("broken", what happened)``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except WorkStarted:
        return "accepted", capsys.readouterr().err
    except Exception as err:  # a traceback: never the answer to a bad value
        capsys.readouterr()
        return "broken", f"{type(err).__name__}: {err}"
    err = capsys.readouterr().err
    if code == 0:
        return "accepted", err
    if code == 2 and "error:" in err and "Traceback" not in err:
        return "refused", err
    return "broken", f"exit {code}: {err[-300:]}"


@pytest.mark.parametrize("command", ["data describe", "data download", "data sids", "sft", "train", "select",
                                     "eval", "bench"])
def test_every_numeric_flag_is_refused_by_name_or_has_a_documented_meaning(command, setup, capsys):
    path = tuple(command.split())
    options = [flag for where, flag in numeric_options() if where == path]
    assert options, command
    problems = []
    for flag in options:
        for value in VALUES:
            kind, said = outcome([*setup[path], f"{flag}={value}"], capsys)
            documented = value in ACCEPTED.get(flag, {}) and ONLY.get((flag, value), path[0]) == path[0]
            if kind == "broken":
                problems.append(f"{flag} {value}: {said}")
            elif kind == "refused" and flag not in said:
                problems.append(f"{flag} {value}: refused without naming the flag: {said.strip()[-200:]}")
            elif kind == "refused" and documented:
                problems.append(f"{flag} {value}: documented in ACCEPTED but refused: {said.strip()[-200:]}")
            elif kind == "accepted" and not documented:
                problems.append(f"{flag} {value}: accepted, with no documented meaning")
    assert not problems, "\n".join(problems)


def test_the_documented_zero_meanings_are_in_the_help():
    """A 0 that means something (off, every epoch, the pool's std) says so in the option's help."""
    helps = {}
    for path, flag in numeric_options():
        parser = build_parser()
        for name in path:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[name]
        action = next(a for a in parser._actions if flag in a.option_strings)
        helps.setdefault(flag, []).append(action.help or "")
    for flag, meanings in ACCEPTED.items():
        if "0" in meanings and "help" in meanings["0"]:
            assert any("0:" in text for text in helps[flag]), (flag, helps[flag])
