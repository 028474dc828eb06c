"""The reliability suite, round 2 (issue 26): bad input gives a clear error before any work, or a
documented meaning; never a silent wrong result, a late error or a Python message.

One test per case, numbered as in the issue (cases 1, 2, 5, 8 and 11 are in tests/test_reliability.py;
tests/test_flags.py runs every numeric flag through 0, -1, nan, inf and 1e9). Every run here is tiny.
"""

import warnings

import pytest

from agents.cli import main
from agents.policy import LLMPolicy
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


# 6 -------------------------------------------------------------------------------------------------


def test_items_that_share_a_title_are_warned_about_once_when_the_tree_is_built():
    from agents.evaluate import evaluate

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
