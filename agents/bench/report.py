"""Reporting of ``recgym bench``: mean +- std over seeds, results.md, metrics.png, curves.png.

Everything here reads the results dict :func:`agents.bench.runner.run_bench` writes to ``results.json``
(``results["agents"][name]["runs"][seed]`` with ``metrics``, ``rollouts``, ``wall_seconds``), so
a finished (or partial) ``results.json`` can be re-reported without rerunning anything.

Rows are compared with SFT request by request: each run's ``metrics["first_hit_ranks"]`` gives its
per-request HR/NDCG@K on the shared test sample, and :func:`paired_differences` bootstraps the
mean difference from SFT over those requests (a paired 95% confidence interval).
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from agents.training.tracking import write_atomically
from recgym.metrics import KS, paired_bootstrap, request_gains

METRICS = tuple(f"{m}@{k}" for k in KS for m in ("HR", "NDCG"))
PAIRED = ("NDCG@10", "HR@20")  # the metrics compared with SFT request by request
REFERENCE = "sft"


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Where the bench ran: platform, CPUs, torch and its threads, the device.

    Example:
        >>> sorted(machine_info())[:3]
        ['cpus', 'device', 'numpy']
    """
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
            "device": dev}
    if dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(results: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per agent: ``{metric: (mean, std)}`` over seeds (sample std; 0 with one seed), plus
    ``rollouts`` and ``wall_seconds``.

    Example:
        >>> runs = {"0": {"metrics": {"HR@10": 0.1}, "rollouts": 0, "wall_seconds": 1},
        ...         "1": {"metrics": {"HR@10": 0.3}, "rollouts": 0, "wall_seconds": 3}}
        >>> r = {"agents": {"a": {"runs": runs}}}
        >>> mean, std = summarize(r)["a"]["HR@10"]
        >>> round(mean, 3), round(std, 4)
        (0.2, 0.1414)
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, agent in results["agents"].items():
        runs = list(agent["runs"].values())
        row: dict[str, tuple[float, float]] = {}
        for key in (*METRICS, "group_hit", "rollouts", "wall_seconds"):
            values = [float(r["metrics"][key] if key in r["metrics"] else r[key]) for r in runs
                      if key in r["metrics"] or key in r]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[key] = (statistics.fmean(values), std)
        out[name] = row
    return out


def _request_gains(agent: dict[str, Any], metric: str) -> np.ndarray | None:
    """An agent's per-request ``metric`` averaged over its runs (seeds) that hold first-hit ranks
    and report ``metric`` (so its K was within the test's lists); None when no run does."""
    runs = [r for r in agent["runs"].values()
            if "first_hit_ranks" in r.get("metrics", {}) and metric in r["metrics"]]
    if not runs:
        return None
    lengths = {len(r["metrics"]["first_hit_ranks"]) for r in runs}
    if len(lengths) > 1:
        raise ValueError(f"first_hit_ranks of different lengths {sorted(lengths)} across one agent's runs: "
                         "they were not tested on the same requests")
    return np.mean([request_gains(np.asarray(r["metrics"]["first_hit_ranks"], dtype=np.int64), metric)
                    for r in runs], axis=0)


def paired_differences(
    results: dict[str, Any], *, reference: str = REFERENCE, metrics: tuple[str, ...] = PAIRED,
    resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per agent and metric: the paired bootstrap of its difference from ``reference`` over test requests.

    Every run's ``metrics["first_hit_ranks"]`` (the bench's shared, seeded test sample, in order)
    gives its per-request gains (:func:`recgym.metrics.request_gains`); an agent with several
    seeds first averages each request's gain over its seeds; then
    :func:`recgym.metrics.paired_bootstrap` resamples requests (the same ones for both) and returns
    ``difference`` (the agent's mean minus the reference's), ``low`` / ``high`` (the ``confidence``
    percentile interval), ``fraction_le_zero``, ``requests``, ``resamples``, ``confidence``, plus
    ``seeds`` (the agent's runs averaged; 1 for one run recorded under every seed). Agents (or the
    reference) without per-request ranks (results from before they were recorded) and metrics a
    run does not report (K above the test beam) are left out; so is the reference itself. ``{}``
    when the reference has none.

    Example:
        >>> run = lambda ranks: {"metrics": {"NDCG@10": 0.0, "HR@20": 0.0, "first_hit_ranks": ranks}}
        >>> r = {"agents": {"sft": {"runs": {"0": run([1, 1, -1, 5])}},
        ...                 "grpo": {"runs": {"0": run([0, 0, -1, 5]), "1": run([1, 1, -1, 5])}}}}
        >>> d = paired_differences(r)["grpo"]["HR@20"]
        >>> d["difference"], d["low"], d["high"], d["seeds"]
        (0.0, 0.0, 0.0, 2)
        >>> round(paired_differences(r)["grpo"]["NDCG@10"]["difference"], 4)  # (1 - 1 / log2(3)) / 2 / 2
        0.0923
    """
    agents = results["agents"]
    if reference not in agents:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric in metrics:
        base = _request_gains(agents[reference], metric)
        if base is None:
            continue
        for name, agent in agents.items():
            if name == reference:
                continue
            gains = _request_gains(agent, metric)
            if gains is None:
                continue
            if len(gains) != len(base):
                raise ValueError(f"{name}: {len(gains)} per-request ranks against {reference}'s {len(base)}: "
                                 "they were not tested on the same requests")
            ranked = [r for r in agent["runs"].values() if metric in r.get("metrics", {})
                      and "first_hit_ranks" in r["metrics"]]
            seeds = 1 if all(r.get("shared_across_seeds") for r in ranked) else len(ranked)
            comparison = paired_bootstrap(gains, base, resamples=resamples, seed=seed, confidence=confidence)
            out.setdefault(name, {})[metric] = {**comparison, "seeds": seeds}
    return out


def _difference_cell(d: dict[str, float] | None) -> str:
    return "-" if d is None else f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def results_table(results: dict[str, Any], differences: dict[str, dict[str, dict[str, float]]] | None = None
                  ) -> str:
    """The Markdown table of results.md: one row per agent, mean +- std over seeds.

    When the SFT row and another have per-request ranks, each of :data:`PAIRED` they report gets a
    column ``Δ<metric> vs sft [95% CI]``: every other row's :func:`paired_differences` (computed
    here unless ``differences`` is given) as ``difference [low, high]``, ``ref`` on SFT's row,
    ``-`` on rows without per-request data.

    Example:
        >>> r = {"seeds": [0, 1], "agents": {"pop": {"runs": {
        ...     "0": {"metrics": {m: 0.1 for m in METRICS}, "rollouts": 0, "wall_seconds": 2.0},
        ...     "1": {"metrics": {m: 0.3 for m in METRICS}, "rollouts": 0, "wall_seconds": 4.0}}}}}
        >>> print(results_table(r).splitlines()[2])  # doctest: +ELLIPSIS
        | pop | 0.2000 ± 0.1414 | 0.2000 ± 0.1414 | ... | 0 | 3.0 |
        >>> run = lambda ranks: {"metrics": {m: 0.0 for m in METRICS} | {"first_hit_ranks": ranks}}
        >>> r["agents"] = {"sft": {"runs": {"0": run([1, 1])}}, "grpo": {"runs": {"0": run([0, 0])}}}
        >>> lines = results_table(r).splitlines()
        >>> lines[0].split(" | ")[-4:-2], lines[2].split(" | ")[-4:-2]
        (['ΔNDCG@10 vs sft [95% CI]', 'ΔHR@20 vs sft [95% CI]'], ['ref', 'ref'])
        >>> lines[3].split(" | ")[-4:-2]  # NDCG@10: 1 - 1 / log2(3) on each request
        ['+0.3691 [+0.3691, +0.3691]', '+0.0000 [+0.0000, +0.0000]']
    """
    summary = summarize(results)
    if differences is None:
        differences = paired_differences(results)
    paired = [m for m in PAIRED if any(m in row for row in differences.values())]
    shown = [m for m in METRICS if any(m in row for row in summary.values())]  # K <= the beam width
    columns = [*shown, *(f"Δ{m} vs {REFERENCE} [95% CI]" for m in paired)]
    group_hit = any("group_hit" in row for row in summary.values())  # RL rows: groups holding a hit
    if group_hit:
        columns.append("group hit")
    header = "| agent | " + " | ".join(columns) + " | rollouts | wall s |"
    lines = [header, "|---" * (len(columns) + 3) + "|"]
    for name, row in summary.items():
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if m in row else "-" for m in shown]
        cells += ["ref" if name == REFERENCE else _difference_cell(differences.get(name, {}).get(m))
                  for m in paired]
        if group_hit:
            cells.append(f"{row['group_hit'][0]:.3f}" if "group_hit" in row else "-")
        rollouts = f"{row['rollouts'][0]:.0f}" if "rollouts" in row else "-"
        wall = f"{row['wall_seconds'][0]:.1f}" if "wall_seconds" in row else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rollouts} | {wall} |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | os.PathLike[str]) -> str:
    """Write ``results.md``, ``metrics.png`` and ``curves.png`` into ``out``; return the table.

    Also sets ``results["paired_differences"]`` (:func:`paired_differences`), which
    :func:`agents.bench.runner.run_bench` then writes to ``results.json``.

    The curves are read from the ``metrics.jsonl`` of every run that names its ``run_dir`` (the RL
    agents and MaskablePPO), against rollouts, one colour per agent.

    Example:
        >>> # write_report(json.loads(Path("runs/bench-ci/results.json").read_text()), "runs/bench-ci")
    """
    from agents.bench.plots import plot_metric_bars, plot_training_curves
    from agents.training.tracking import MetricLogger

    out = Path(out)

    logs = {(name, seed): MetricLogger.read(run["run_dir"]) for name, agent in results["agents"].items()
            for seed, run in agent["runs"].items() if "run_dir" in run and Path(run["run_dir"]).is_dir()}
    for (name, seed), records in logs.items():  # the share of rollout groups holding a hit, over training
        shares = [r["group_hit"] for r in records if "group_hit" in r]
        if shares:
            results["agents"][name]["runs"][seed]["group_hit"] = float(np.mean(shares))
    differences = paired_differences(results)
    results["paired_differences"] = differences  # run_bench writes results.json after this
    table = results_table(results, differences)
    p, budget = results["preset"], results["budget"]
    protocol = results["test_protocol"]
    paired = ""
    if differences:
        resamples = next(iter(next(iter(differences.values())).values()))["resamples"]
        paired = (f" Δ columns: the mean difference from {REFERENCE} over the same test requests, with "
                  f"its paired bootstrap 95% confidence interval ({resamples} resamples of the requests; "
                  f"an agent's per-request gains are first averaged over its seeds); `-`: no "
                  f"per-request data.")
    excluded = ", history items excluded" if protocol.get("history_excluded") else ""
    text = (f"# recgym bench: {results['env']} ({results['representation']}), preset {p['name']}\n\n"
            f"Seeds {', '.join(map(str, results['seeds']))}; mean ± std over seeds. Test: "
            f"{protocol['requests']} requests sampled with seed {protocol['sample_seed']}, beam "
            f"{protocol['beam']}{excluded}. RL budget: {budget['rl_steps']} steps x "
            f"{budget['requests_per_step']} requests x {budget['rollouts_per_request']} rollouts = "
            f"{budget['rollouts']} rollouts per agent and seed, every RL agent from the same SFT start. "
            f"Wall seconds are per seed.{paired}\n\n"
            f"{table}\n")
    write_atomically(out / "results.md", text)
    plot_metric_bars(summarize(results), out / "metrics.png")
    curves = {f"{name} seed{seed}": records for (name, seed), records in logs.items()}
    if curves:
        plot_training_curves(curves, out / "curves.png", x="rollouts",
                             group_of=lambda label: label.rsplit(" seed", 1)[0])
    return table


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench's results from benches of the same preset, agents and test run with other seeds
    (e.g. one process per seed on a machine with several cores).

    Runs of every agent are gathered by seed; agents shared across seeds (popularity, the SFT start)
    keep the first part's run under every seed. Parts whose env, preset name, RL budget or test
    protocol differ are refused; other preset fields may differ (e.g. a baseline's settings in a
    part that ran only that baseline), and every part's preset is kept in ``parts``.

    Example:
        >>> base = {"env": "e", "preset": {"name": "cpu"}, "budget": {}, "test_protocol": {"beam": 50}}
        >>> run = lambda seed, shared: {"seed": seed, "metrics": {}, "shared_across_seeds": shared}
        >>> a = {**base, "seeds": [0], "agents": {"sft": {"runs": {"0": run(0, True)}},
        ...                                       "grpo": {"runs": {"0": run(0, False)}}}}
        >>> b = {**base, "seeds": [1], "agents": {"sft": {"runs": {"1": run(1, True)}},
        ...                                       "grpo": {"runs": {"1": run(1, False)}}}}
        >>> m = merge_results([a, b])
        >>> m["seeds"], sorted(m["agents"]["grpo"]["runs"]), m["agents"]["sft"]["runs"]["1"]["seed"]
        ([0, 1], ['0', '1'], 0)
    """
    if not parts:
        raise ValueError("merge_results: no results to merge")
    first = parts[0]
    for i, part in enumerate(parts[1:], 1):
        for key in ("env", "budget", "test_protocol"):
            if part.get(key) != first.get(key):
                raise ValueError(f"merge_results: part {i} has another {key} than part 0; only benches of "
                                 "one preset, env and test protocol merge")
        if part["preset"]["name"] != first["preset"]["name"]:
            names = (part["preset"]["name"], first["preset"]["name"])
            raise ValueError(f"merge_results: part {i} has another preset than part 0 {names}")
    seeds = sorted({int(s) for part in parts for s in part["seeds"]})
    kept = [{"seeds": p["seeds"], "agents": list(p["agents"]), "preset": p["preset"]} for p in parts]
    merged = {**first, "seeds": seeds, "agents": {}, "parts": kept}
    for part in parts:
        for name, agent in part["agents"].items():
            into = merged["agents"].setdefault(name, {**agent, "runs": {}})
            for seed, run in agent["runs"].items():
                if run.get("shared_across_seeds") and into["runs"]:
                    continue  # one shared run (the first part's) stands for every seed
                into["runs"][seed] = run
    for agent in merged["agents"].values():
        runs = agent["runs"]
        if all(r.get("shared_across_seeds") for r in runs.values()):
            shared = next(iter(runs.values()))
            agent["runs"] = {str(s): shared for s in seeds}
    return merged


__all__ = ["METRICS", "PAIRED", "REFERENCE", "machine_info", "merge_results", "paired_differences",
           "results_table", "summarize", "write_report"]
