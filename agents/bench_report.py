"""Reporting of ``recgym bench``: mean +- std over seeds, results.md, metrics.png, curves.png.

Everything here reads the results dict :func:`agents.bench.run_bench` writes to ``results.json``
(``results["agents"][name]["runs"][seed]`` with ``metrics``, ``rollouts``, ``wall_seconds``), so
a finished (or partial) ``results.json`` can be re-reported without rerunning anything.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

from agents.tracking import write_atomically
from recgym.metrics import KS

METRICS = tuple(f"{m}@{k}" for k in KS for m in ("HR", "NDCG"))


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Where the bench ran: platform, CPUs, torch and its threads, the device.

    Example:
        >>> sorted(machine_info())[:3]
        ['cpus', 'device', 'numpy']
    """
    import numpy as np
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
        for key in (*METRICS, "rollouts", "wall_seconds"):
            values = [float(r["metrics"][key] if key in r["metrics"] else r[key]) for r in runs
                      if key in r["metrics"] or key in r]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[key] = (statistics.fmean(values), std)
        out[name] = row
    return out


def results_table(results: dict[str, Any]) -> str:
    """The Markdown table of results.md: one row per agent, mean +- std over seeds.

    Example:
        >>> r = {"seeds": [0, 1], "agents": {"pop": {"runs": {
        ...     "0": {"metrics": {m: 0.1 for m in METRICS}, "rollouts": 0, "wall_seconds": 2.0},
        ...     "1": {"metrics": {m: 0.3 for m in METRICS}, "rollouts": 0, "wall_seconds": 4.0}}}}}
        >>> print(results_table(r).splitlines()[2])  # doctest: +ELLIPSIS
        | pop | 0.2000 ± 0.1414 | 0.2000 ± 0.1414 | ... | 0 | 3.0 |
    """
    summary = summarize(results)
    shown = [m for m in METRICS if any(m in row for row in summary.values())]  # K <= the beam width
    header = "| agent | " + " | ".join(shown) + " | rollouts | wall s |"
    lines = [header, "|---" * (len(shown) + 3) + "|"]
    for name, row in summary.items():
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if m in row else "-" for m in shown]
        rollouts = f"{row['rollouts'][0]:.0f}" if "rollouts" in row else "-"
        wall = f"{row['wall_seconds'][0]:.1f}" if "wall_seconds" in row else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rollouts} | {wall} |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | os.PathLike[str]) -> str:
    """Write ``results.md``, ``metrics.png`` and ``curves.png`` into ``out``; return the table.

    The curves are read from the ``metrics.jsonl`` of every run that names its ``run_dir`` (the RL
    agents and MaskablePPO), against rollouts, one colour per agent.

    Example:
        >>> # write_report(json.loads(Path("runs/bench-ci/results.json").read_text()), "runs/bench-ci")
    """
    from agents.plots import plot_metric_bars, plot_training_curves
    from agents.tracking import MetricLogger

    out = Path(out)

    table = results_table(results)
    p, budget = results["preset"], results["budget"]
    protocol = results["test_protocol"]
    text = (f"# recgym bench: {results['env']} ({results['representation']}), preset {p['name']}\n\n"
            f"Seeds {', '.join(map(str, results['seeds']))}; mean ± std over seeds. Test: "
            f"{protocol['requests']} requests sampled with seed {protocol['sample_seed']}, beam "
            f"{protocol['beam']}. RL budget: {budget['rl_steps']} steps x {budget['requests_per_step']} "
            f"requests x {budget['rollouts_per_request']} rollouts = {budget['rollouts']} rollouts per "
            f"agent and seed, every RL agent from the same SFT start. Wall seconds are per seed.\n\n"
            f"{table}\n")
    write_atomically(out / "results.md", text)
    plot_metric_bars(summarize(results), out / "metrics.png")
    curves = {f"{name} seed{seed}": MetricLogger.read(run["run_dir"])
              for name, agent in results["agents"].items() for seed, run in agent["runs"].items()
              if "run_dir" in run}
    if curves:
        plot_training_curves(curves, out / "curves.png", x="rollouts",
                             group_of=lambda label: label.rsplit(" seed", 1)[0])
    return table


__all__ = ["METRICS", "machine_info", "results_table", "summarize", "write_report"]
