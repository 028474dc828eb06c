import json

import pytest

from agents.bench_report import METRICS, results_table, summarize, write_report


def _run(agent_metrics, wall=1.0, rollouts=0):
    return {"metrics": {**agent_metrics, "requests": 10}, "wall_seconds": wall, "rollouts": rollouts}


def test_markdown_table_is_mean_and_sample_std_over_seeds():
    both = {m: 0.0 for m in METRICS}
    results = {"agents": {
        "grpo": {"runs": {"0": _run({**both, "HR@10": 0.2, "NDCG@10": 0.1}, wall=10, rollouts=64),
                          "1": _run({**both, "HR@10": 0.4, "NDCG@10": 0.3}, wall=20, rollouts=64)}},
        "popularity": {"runs": {"0": _run({**both, "HR@10": 0.05}), "1": _run({**both, "HR@10": 0.05})}},
        "partial": {"runs": {"0": _run({"HR@1": 0.5})}},
    }}
    lines = results_table(results).splitlines()
    assert lines[0].startswith("| agent | HR@1 | NDCG@1 |") and lines[0].endswith("| rollouts | wall s |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| grpo", "| popularity", "| partial"]
    grpo = lines[2].split(" | ")
    header = lines[0].split(" | ")
    assert grpo[header.index("HR@10")] == "0.3000 ± 0.1414"  # stdev([0.2, 0.4]) = 0.1414 (n - 1)
    assert grpo[header.index("NDCG@10")] == "0.2000 ± 0.1414"
    assert grpo[-2:] == ["64", "15.0 |"]
    assert lines[3].split(" | ")[header.index("HR@10")] == "0.0500 ± 0.0000"
    partial = lines[4].split(" | ")
    assert partial[1] == "0.5000 ± 0.0000" and partial[header.index("HR@20")] == "-"
    assert summarize(results)["grpo"]["HR@10"][0] == pytest.approx(0.3)


def test_write_report_rereads_a_results_file(tmp_path):
    run_dir = tmp_path / "runs" / "grpo-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "rollouts": 0, "valid/HR@10": 0.1}, {"step": 1, "rollouts": 64, "hit_rate": 0.2,
                                                          "entropy": 1.1}]))
    metrics = {m: 0.1 for m in METRICS}
    results = {"env": "RecGen-Synthetic-v0", "representation": "sid", "preset": {"name": "ci"}, "seeds": [0],
               "budget": {"rl_steps": 1, "requests_per_step": 8, "rollouts_per_request": 8, "rollouts": 64},
               "test_protocol": {"requests": 10, "sample_seed": 0, "beam": 20},
               "agents": {"grpo": {"runs": {"0": {**_run(metrics, rollouts=64), "run_dir": str(run_dir)}}},
                          "popularity": {"runs": {"0": _run(metrics)}}}}
    table = write_report(json.loads(json.dumps(results)), tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert table in md and "| grpo | 0.1000 ± 0.0000" in table and "64 rollouts" in md
    assert all((tmp_path / png).stat().st_size > 5000 for png in ("metrics.png", "curves.png"))
    del results["agents"]["grpo"]
    (tmp_path / "curves.png").unlink()
    write_report(results, tmp_path)
    assert not (tmp_path / "curves.png").exists()  # no RL run, no curves
