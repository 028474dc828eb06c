"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVES = (("hit_rate", "rollout hit rate"), ("entropy", "policy entropy (nats/token)"),
          ("valid/HR@10", "valid HR@10"))


def plot_training_curves(
    runs: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike[str],
    curves: Sequence[tuple[str, str]] = CURVES, x: str = "step",
) -> Path:
    """One panel per metric, one line per run, against ``x`` (e.g. ``step`` or ``rollouts``).

    ``runs`` maps a label to its metric records (``MetricLogger.read(run_dir)``); records without
    the metric are skipped. The PNG is written to a temporary name first, then renamed.

    Example:
        >>> import tempfile
        >>> records = [{"step": 1, "hit_rate": 0.1}, {"step": 2, "hit_rate": 0.2, "valid/HR@10": 0.3}]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_training_curves({"grpo": records}, Path(d) / "c.png").exists()
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], curves):
        for label, records in runs.items():
            points = [(r[x], r[key]) for r in records if key in r and x in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if key.startswith("valid/") else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
