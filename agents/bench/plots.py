"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CURVES = (("hit_rate", "rollout hit rate"), ("group_hit", "groups with a hit"),
          ("entropy", "policy entropy (nats/token)"), ("valid/HR@10", "valid HR@10"))


def plot_training_curves(
    runs: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike[str],
    curves: Sequence[tuple[str, str]] = CURVES, x: str = "step",
    group_of: Callable[[str], str] | None = None,
) -> Path:
    """One panel per metric, one line per run, against ``x`` (e.g. ``step`` or ``rollouts``).

    ``runs`` maps a label to its metric records (``MetricLogger.read(run_dir)``); records without
    the metric are skipped. With ``group_of``, runs whose labels map to the same group (e.g. one
    agent's seeds) share a colour and one legend entry. The PNG is written to a temporary name
    first, then renamed.

    Example:
        >>> import tempfile
        >>> records = [{"step": 1, "hit_rate": 0.1}, {"step": 2, "hit_rate": 0.2, "valid/HR@10": 0.3}]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_training_curves({"grpo": records}, Path(d) / "c.png").exists()
        True
    """
    plt = _pyplot()
    groups = list(dict.fromkeys(group_of(label) if group_of else label for label in runs))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], curves):
        labelled: set[str] = set()
        for label, records in runs.items():
            group = group_of(label) if group_of else label
            points = [(r[x], r[key]) for r in records if key in r and x in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if key.startswith("valid/") else None, markersize=3,
                        color=colours[group], label=None if group in labelled else group)
                labelled.add(group)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return _save(fig, plt, path)


def plot_metric_bars(
    summary: dict[str, dict[str, tuple[float, float]]], path: str | os.PathLike[str],
    metrics: Sequence[str] = ("HR@10", "NDCG@10"),
) -> Path:
    """Grouped bars: one group per agent, one bar per metric, at the mean with a +-std error bar.

    ``summary`` maps an agent to ``{metric: (mean, std)}`` (e.g. over seeds).

    Example:
        >>> import tempfile
        >>> summary = {"sft": {"HR@10": (0.10, 0.01), "NDCG@10": (0.05, 0.0)},
        ...            "grpo": {"HR@10": (0.12, 0.02), "NDCG@10": (0.06, 0.01)}}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_metric_bars(summary, Path(d) / "m.png").exists()
        True
    """
    import numpy as np

    plt = _pyplot()
    agents = list(summary)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(agents) + 1.5), 3.6))
    width = 0.8 / len(metrics)
    positions = np.arange(len(agents))
    for i, metric in enumerate(metrics):
        means = [summary[a].get(metric, (np.nan, 0.0))[0] for a in agents]
        stds = [summary[a].get(metric, (np.nan, 0.0))[1] for a in agents]
        ax.bar(positions + (i - (len(metrics) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=metric)
    ax.set_xticks(positions, agents, rotation=30, ha="right")
    ax.set_ylabel("test metric (mean +- std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` through a temporary name (a reader never sees half a PNG)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
