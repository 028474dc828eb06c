"""The Games SFT policy against SASRec and TIGER's published number, with bootstrap intervals.

Reads the per-request first-hit ranks that ``bench_sft_games.py`` (``--sft``, its ``.ranks.npz``)
and ``bench_sasrec_games.py`` (``--sasrec``) write beside their JSON: every test request of
``games-lcrec`` in the same order, each request's 0-based rank of its target among the top 50
(-1 beyond). For HR and NDCG at 10 and 50 it reports

* each model's mean with a 95% percentile bootstrap interval over requests (:func:`interval`);
* each SFT view minus each other model's view, **paired** (:func:`recgym.metrics.paired_bootstrap`:
  the same resampled requests for both, so what the two share cancels), with the share of
  resamples <= 0. The SFT file holds ``sft`` (the reference protocol, every item) and, from
  ``bench_sft_games.py`` runs since history exclusion exists, ``sft_history_excluded`` (the
  search never returns an item of the request's history), with popularity's two views beside them;
  SASRec's file holds ``own_ranking`` and ``history_excluded``. Compare like with like: ``sft``
  with ``own_ranking``, ``sft_history_excluded`` with ``history_excluded``.
* each SFT view minus TIGER's published NDCG@10 (.0501): a constant, so its interval is SFT's shifted.

Writes ``benchmarks/results/games-sft-vs-sasrec.json`` and a plot of the NDCG@10 intervals
(``.png`` beside it).

    python benchmarks/compare_games.py --sft benchmarks/results/sft-games-atomic-e20.ranks.npz \\
        --sasrec benchmarks/results/sasrec-games.ranks.npz
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from recgym.metrics import paired_bootstrap, request_gains

TIGER_NDCG10 = 0.0501  # LC-Rec paper, TIGER on LC-Rec Games (test, all users)
METRICS = ("NDCG@10", "HR@10", "NDCG@50", "HR@50")


def interval(gains: np.ndarray, resamples: int, seed: int) -> dict[str, float]:
    """Mean of ``gains`` over requests and its 95% percentile bootstrap interval: the paired bootstrap
    of ``gains`` against zero (resampling requests, as for a difference).

    Example:
        >>> r = interval(np.array([0.0, 1.0, 0.0, 1.0]), 200, 0)
        >>> r["mean"], 0.0 <= r["low"] <= 0.5 <= r["high"] <= 1.0
        (0.5, True)
    """
    r = paired_bootstrap(gains, np.zeros_like(gains), resamples=resamples, seed=seed)
    return {"mean": r["difference"], "low": r["low"], "high": r["high"]}


def load_ranks(path: Path, rows_expected: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The first-hit ranks in ``path`` (name -> int array) and their length, checked: one length, and
    where the file has ``rows``, the test rows in order (every request, not a sample)."""
    with np.load(path) as f:
        arrays = {k: f[k].astype(np.int64) for k in f.files}
    rows = arrays.pop("rows", None)
    lengths = {k: len(v) for k, v in arrays.items()}
    if not arrays or len(set(lengths.values())) != 1:
        raise SystemExit(f"{path}: expected ranks of one length, got {lengths}")
    n = next(iter(lengths.values()))
    if rows is not None and not np.array_equal(rows, np.arange(n)):
        raise SystemExit(f"{path}: its rows are a sample of the test split, not all of it in order: rerun "
                         f"bench_sft_games.py with --test-requests 0 for a paired comparison")
    if rows_expected is not None and n != rows_expected:
        raise SystemExit(f"{path}: {n} requests, the other file has {rows_expected}: not the same test split")
    return arrays, n


def compare(sft: dict[str, np.ndarray], others: dict[str, np.ndarray], resamples: int, seed: int,
            ) -> dict[str, Any]:
    """Means with intervals, and each SFT view (``sft``: name -> ranks) minus each of ``others``
    paired, per metric (module docstring)."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        gains = {name: request_gains(ranks, metric) for name, ranks in {**sft, **others}.items()}
        entry: dict[str, Any] = {name: interval(g, resamples, seed) for name, g in gains.items()}
        for name in sft:
            for other in others:
                entry[f"{name} - {other}"] = paired_bootstrap(gains[name], gains[other], resamples=resamples,
                                                              seed=seed)
        out[metric] = entry
    for name in sft:
        s, t = out["NDCG@10"][name], TIGER_NDCG10
        out["NDCG@10"][f"{name} - TIGER (published)"] = {
            "difference": s["mean"] - t, "low": s["low"] - t, "high": s["high"] - t,
            "note": "TIGER's number is a published constant without an interval: SFT's interval shifted"}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """NDCG@10 of each model with its interval, TIGER's published number as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in result["NDCG@10"].items() if "mean" in v}
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    for i, v in enumerate(rows.values()):
        ax.errorbar(v["mean"], i, xerr=[[v["mean"] - v["low"]], [v["high"] - v["mean"]]], fmt="o", capsize=4)
    ax.axvline(TIGER_NDCG10, color="k", ls="--", lw=1, label="TIGER (published)")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(f"test NDCG@10 ({result['requests']:,} requests, 95% bootstrap interval)")
    ax.set_title("LC-Rec Games: from-scratch SFT policy vs SASRec")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="bench_sft_games.py's .ranks.npz (all test requests)")
    parser.add_argument("--sasrec", required=True, help="bench_sasrec_games.py's .ranks.npz")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/games-sft-vs-sasrec.json")
    args = parser.parse_args()
    sft, n = load_ranks(Path(args.sft))
    if "sft" not in sft:
        raise SystemExit(f"--sft {args.sft}: no 'sft' ranks in it (has {sorted(sft)})")
    sasrec, _ = load_ranks(Path(args.sasrec), n)
    views = {k: v for k, v in sft.items() if k.startswith("sft")}
    others = {**sasrec, **{k: v for k, v in sft.items() if k not in views}}  # SASRec's views, popularity's
    result = {"sft_ranks": args.sft, "sasrec_ranks": args.sasrec, "requests": n, "resamples": args.resamples,
              "seed": args.seed, "confidence": 0.95, **compare(views, others, args.resamples, args.seed)}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    for name, v in result["NDCG@10"].items():
        value = v.get("mean", v.get("difference"))
        print(f"NDCG@10 {name:>40}: {value:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]")
    print(f"wrote {out} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
