import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_random_agent_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["random_agent.py", "--episodes", "5", "--num-items", "300"])
    runpy.run_path(str(EXAMPLES / "random_agent.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "single_env_hit_rate" in out and "target:" in out


def test_reinforce_plugin_is_benchmarked_without_editing_the_package(tmp_path, monkeypatch):
    import json

    from agents.cli import main
    from agents.learners import learner_names

    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench-plugin"
    # The documented command (examples/reinforce_plugin.py's docstring), at a smaller scale.
    assert main(["bench", "--plugin", str(EXAMPLES / "reinforce_plugin.py"), "--agents", "sft,grpo,reinforce",
                 "--preset", "ci", "--seeds", "0,1", "--sft-steps", "10", "--rl-steps", "3",
                 "--requests-per-step", "4", "--test-requests", "40", "--eval-requests", "20", "--quiet",
                 "--out", str(out)]) == 0
    assert "reinforce" in learner_names()
    results = json.loads((out / "results.json").read_text())
    runs = results["agents"]["reinforce"]["runs"]
    assert sorted(runs) == ["0", "1"]
    for seed, run in runs.items():
        assert run["rollouts"] == results["budget"]["rollouts"] == 3 * 4 * 8
        assert run["config"]["name"] == "reinforce" and run["config"]["group_size"] == 8
        assert run["config"]["rl"]["seed"] == int(seed)
        records = [json.loads(x) for x in (out / "runs" / f"reinforce-seed{seed}" / "metrics.jsonl")
                   .read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
        assert all("baseline" in r and "entropy" in r for r in records if "loss" in r)
    assert "| reinforce | " in (out / "results.md").read_text()
    # Loading the plug-in again (e.g. a second bench in one process) does not register it twice.
    assert main(["bench", "--plugin", str(EXAMPLES / "reinforce_plugin.py"), "--agents", "bogus",
                 "--out", str(out)]) == 2


def test_reinforce_plugin_trains_through_recgym_train(tmp_path, monkeypatch, capsys):
    """``recgym train --plugin`` makes the plug-in a valid --agent, with the built-ins' setting checks."""
    import json

    from agents.cli import main

    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))
    plugin = str(EXAMPLES / "reinforce_plugin.py")
    small = ["--representation", "sid", "--set", "vocab_size=400", "--dataset-set", "num_items=300",
             "--dataset-set", "num_users=200"]
    run = tmp_path / "reinforce"
    assert main(["train", "--plugin", plugin, "--agent", "reinforce", *small, "--sft-steps", "2",
                 "--steps", "2", "--requests-per-step", "2", "--group-size", "3", "--eval-requests", "4",
                 "--test-requests", "4", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["agent"]["name"] == "reinforce" and results["agent"]["group_size"] == 3
    assert results["rl"]["rollouts"] == 2 * 2 * 3
    assert main(["train", "--plugin", plugin, "--agent", "reinforce", "--learner-set", "decay_rate=1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "reinforce: unknown setting(s) ['decay_rate']" in capsys.readouterr().err
