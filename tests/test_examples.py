import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_random_agent_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["random_agent.py", "--episodes", "5", "--num-items", "300"])
    runpy.run_path(str(EXAMPLES / "random_agent.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "single_env_hit_rate" in out and "target:" in out
