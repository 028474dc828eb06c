import json

import numpy as np
import pytest

from agents.bench.report import METRICS, merge_results, results_table, summarize, write_report


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
        {"step": 0, "rollouts": 0, "valid/HR@10": 0.1},
        {"step": 1, "rollouts": 64, "hit_rate": 0.2, "group_hit": 0.25, "entropy": 1.1},
        {"step": 2, "rollouts": 128, "hit_rate": 0.1, "group_hit": 0.5, "entropy": 1.0}]))
    metrics = {m: 0.1 for m in METRICS}
    results = {"env": "RecGen-Synthetic-v0", "representation": "sid", "preset": {"name": "ci"}, "seeds": [0],
               "budget": {"rl_steps": 1, "requests_per_step": 8, "rollouts_per_request": 8, "rollouts": 64},
               "test_protocol": {"requests": 10, "sample_seed": 0, "beam": 20},
               "agents": {"grpo": {"runs": {"0": {**_run(metrics, rollouts=64), "run_dir": str(run_dir)}}},
                          "popularity": {"runs": {"0": _run(metrics)}}}}
    table = write_report(json.loads(json.dumps(results)), tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert table in md and "| grpo | 0.1000 ± 0.0000" in table and "64 rollouts" in md
    header, rows = table.splitlines()[0].split(" | "), [line.split(" | ") for line in table.splitlines()[2:]]
    column = header.index("group hit")  # the mean over the run's steps: (0.25 + 0.5) / 2
    assert [row[column] for row in rows] == ["0.375", "-"]
    assert all((tmp_path / png).stat().st_size > 5000 for png in ("metrics.png", "curves.png"))
    del results["agents"]["grpo"]
    (tmp_path / "curves.png").unlink()
    write_report(results, tmp_path)
    assert not (tmp_path / "curves.png").exists()  # no RL run, no curves


# -- paired differences from SFT over test requests (issue 25) ----------------------------------------

def _ranked(ranks, beam=50, shared=False):
    """A run with every metric K <= beam (values from the ranks) and its per-request first-hit ranks."""
    from recgym.metrics import request_gains

    metrics = {m: float(request_gains(ranks, m).mean()) for m in METRICS if int(m.split("@")[1]) <= beam}
    run = _run({**metrics, "first_hit_ranks": list(ranks)})
    return {**run, "shared_across_seeds": True} if shared else run


def test_paired_differences_are_exact_for_known_shifts_and_average_seeds_first():
    from agents.bench.report import paired_differences

    n = 6
    sft = {"runs": {s: _ranked([1] * n, shared=True) for s in "012"}}  # one run recorded under 3 seeds
    results = {"agents": {
        "sft": sft,
        "top": {"runs": {"0": _ranked([0] * n)}},  # every hit moved from rank 1 to rank 0
        # Two seeds that alternate hit (rank 0) and miss: averaged per request, every request scores
        # 0.5; pooling the seeds' requests instead would give a wide interval.
        "half": {"runs": {"0": _ranked([0, -1] * (n // 2)), "1": _ranked([-1, 0] * (n // 2))}},
        "old": {"runs": {"0": _run({m: 0.1 for m in METRICS})}},  # a results.json from before the ranks
    }}
    d = paired_differences(results)
    assert sorted(d) == ["half", "top"]  # not SFT itself, not the row without ranks
    ndcg_sft = 1 / np.log2(3)
    top, half = d["top"], d["half"]
    assert top["NDCG@10"]["difference"] == pytest.approx(1 - ndcg_sft)
    assert top["NDCG@10"]["low"] == pytest.approx(1 - ndcg_sft) == top["NDCG@10"]["high"]
    assert (top["HR@20"]["difference"], top["HR@20"]["low"], top["HR@20"]["high"]) == (0.0, 0.0, 0.0)
    assert half["NDCG@10"]["low"] == pytest.approx(0.5 - ndcg_sft) == half["NDCG@10"]["high"]
    assert (half["HR@20"]["difference"], half["HR@20"]["low"], half["HR@20"]["high"]) == (-0.5, -0.5, -0.5)
    assert (half["HR@20"]["seeds"], top["HR@20"]["seeds"]) == (2, 1)
    assert top["NDCG@10"]["requests"] == n and top["NDCG@10"]["resamples"] == 2000
    assert top["NDCG@10"]["fraction_le_zero"] == 0.0 and half["HR@20"]["fraction_le_zero"] == 1.0
    lines = results_table(results).splitlines()
    header = lines[0].split(" | ")
    assert header[-4:] == ["ΔNDCG@10 vs sft [95% CI]", "ΔHR@20 vs sft [95% CI]", "rollouts", "wall s |"]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    assert rows["sft"][-4:-2] == ["ref", "ref"] and rows["old"][-4:-2] == ["-", "-"]
    assert rows["top"][-4:-2] == ["+0.3691 [+0.3691, +0.3691]", "+0.0000 [+0.0000, +0.0000]"]
    assert rows["half"][-4:-2] == ["-0.1309 [-0.1309, -0.1309]", "-0.5000 [-0.5000, -0.5000]"]
    assert rows["top"][header.index("NDCG@10")] == "1.0000 ± 0.0000"  # mean ± std still beside it


def test_paired_differences_bootstrap_the_seed_averaged_gains_against_sft():
    from agents.bench.report import paired_differences
    from recgym.metrics import paired_bootstrap, request_gains

    sft_ranks = [0, 3, -1, 12, 25, 1, -1, 9, 0, 4]
    seeds = {"0": [1, 0, 2, -1, 15, 1, 30, 9, 0, -1], "1": [0, 3, 0, 12, -1, 0, -1, 8, 2, 4]}
    results = {"agents": {"sft": {"runs": {"0": _ranked(sft_ranks)}},
                          "riser": {"runs": {s: _ranked(r) for s, r in seeds.items()}}}}
    d = paired_differences(results, resamples=500, seed=3)["riser"]
    for metric in ("NDCG@10", "HR@20"):
        gains = (request_gains(seeds["0"], metric) + request_gains(seeds["1"], metric)) / 2
        expect = paired_bootstrap(gains, request_gains(sft_ranks, metric), resamples=500, seed=3)
        assert d[metric] == {**expect, "seeds": 2}, metric
        assert d[metric]["low"] < d[metric]["high"]
    # HR@20 by hand: SFT hits 7 of 10 within 20 (not 25 and the misses); riser's seeds 7 and 8.
    assert d["HR@20"]["difference"] == pytest.approx((7 + 8) / 2 / 10 - 7 / 10)


def test_a_beam_below_20_compares_ndcg_only_and_mismatched_samples_are_refused():
    from agents.bench.report import paired_differences

    results = {"agents": {"sft": {"runs": {"0": _ranked([0, 5, -1], beam=10)}},
                          "grpo": {"runs": {"0": _ranked([0, 4, -1], beam=10)}}}}
    d = paired_differences(results)
    assert list(d["grpo"]) == ["NDCG@10"]  # HR@20 needs lists of 20
    assert d["grpo"]["NDCG@10"]["difference"] == pytest.approx((1 / np.log2(6) - 1 / np.log2(7)) / 3)
    header = results_table(results).splitlines()[0]
    assert "ΔNDCG@10 vs sft [95% CI]" in header and "ΔHR@20" not in header
    assert paired_differences({"agents": {"grpo": results["agents"]["grpo"]}}) == {}  # no SFT row
    results["agents"]["grpo"]["runs"]["1"] = _ranked([0, 4], beam=10)
    with pytest.raises(ValueError, match="first_hit_ranks of different lengths"):
        paired_differences(results)
    results["agents"]["grpo"]["runs"] = {"0": _ranked([0, 4], beam=10)}
    with pytest.raises(ValueError, match="grpo: 2 per-request ranks against sft's 3"):
        paired_differences(results)


def test_write_report_puts_the_differences_in_results_and_results_md(tmp_path):
    results = {"env": "RecGen-Synthetic-v0", "representation": "sid", "preset": {"name": "ci"}, "seeds": [0],
               "budget": {"rl_steps": 1, "requests_per_step": 8, "rollouts_per_request": 8, "rollouts": 64},
               "test_protocol": {"requests": 4, "sample_seed": 0, "beam": 50},
               "agents": {"sft": {"runs": {"0": _ranked([1, 1, 1, 1])}},
                          "grpo": {"runs": {"0": _ranked([0, 0, 0, 0])}}}}
    table = write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "ΔNDCG@10 vs sft [95% CI]" in table and table in md
    assert "paired bootstrap 95% confidence interval (2000 resamples" in md
    stored = json.loads(json.dumps(results))["paired_differences"]  # results.json carries them
    assert stored["grpo"]["HR@20"]["difference"] == 0.0 and stored["grpo"]["NDCG@10"]["requests"] == 4


def test_merge_results_gathers_seeds_and_refuses_other_presets():
    base = {"env": "RecGen-Games-v0", "preset": {"name": "cpu"}, "budget": {"rollouts": 64},
            "test_protocol": {"beam": 50}}
    metrics = {m: 0.1 for m in METRICS}
    parts = [{**base, "seeds": [seed], "agents": {
        "sft": {"runs": {str(seed): {**_run(metrics), "shared_across_seeds": True, "seed": seed}}},
        "grpo": {"runs": {str(seed): {**_run({**metrics, "HR@10": 0.1 * (seed + 1)}), "seed": seed}}}}}
        for seed in (0, 1, 2)]
    merged = merge_results(parts)
    assert merged["seeds"] == [0, 1, 2]
    assert [r["metrics"]["HR@10"] for r in merged["agents"]["grpo"]["runs"].values()] == \
        pytest.approx([0.1, 0.2, 0.3])
    assert {r["seed"] for r in merged["agents"]["sft"]["runs"].values()} == {0}  # one shared run
    assert summarize(merged)["grpo"]["HR@10"][0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="another preset"):
        merge_results([parts[0], {**parts[1], "preset": {"name": "ci"}}])
    with pytest.raises(ValueError, match="another test_protocol"):
        merge_results([parts[0], {**parts[1], "test_protocol": {"beam": 20}}])
