import json

import pytest

from agents.cli import main

SMALL = ["--dataset-set", "num_items=200", "--dataset-set", "num_users=150"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))


def test_data_describe_and_list(capsys):
    assert main(["data", "describe", "synthetic", "--set", "num_items=300", "--set", "num_users=100"]) == 0
    out = capsys.readouterr().out
    assert "dataset synthetic: 300 items" in out and "train" in out
    assert main(["data", "list"]) == 0
    assert "games-lcrec" in capsys.readouterr().out


def test_sft_then_eval_write_results(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["sft", "--representation", "sid", *SMALL, "--max-steps", "4", "--batch-size", "16",
            "--eval-requests", "10", "--test-requests", "10", "--out", str(run)]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["representation"] == "sid" and "HR@20" in results["test"]
    assert "| sft (tiny) |" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert main(["eval", *SMALL, "--policy", str(run / "best"), "--max-requests", "10",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["requests"] == 10
    assert main(["eval", *SMALL, "--agent", "transition", "--max-requests", "50"]) == 0
    assert "| transition |" in capsys.readouterr().out


def test_errors_are_reported_not_raised(capsys):
    assert main(["data", "describe", "no-such-dataset"]) == 2
    assert "recgym: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "describe", "synthetic", "--set", "novalue"])
