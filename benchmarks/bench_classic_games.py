"""Classic baselines on real data: popularity, first-order transitions and SASRec, test HR/NDCG@K.

Every model is fitted on ``train`` (SASRec early-stops on ``valid``) and ranks the whole catalogue
for every ``test`` request. Each model is scored twice: on its own ranking, and with the request's
history items removed from it (the SASRec paper's protocol; on Games no user repeats an item).
Writes ``benchmarks/results/classic-games.json`` (``classic-<dataset>.json`` for other data).
On a 2-core CPU the Games run takes about 14 minutes (SASRec: ~46 s per epoch at batch 256).

    python benchmarks/bench_classic_games.py [--dataset ../shared/data/games-lcrec] [--epochs 15]
    python benchmarks/bench_classic_games.py --dataset synthetic --batch-size 128 --epochs 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from agents.baselines import PopularityRecommender, TransitionRecommender
from agents.baselines.sasrec import SASRecConfig, SASRecRecommender
from agents.training.evaluate import without_history
from recgym.data import Examples, load
from recgym.metrics import KS, first_hit_ranks, format_table, hits_from_ranked, ranking_metrics

DEFAULT_DATASET = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "games-lcrec")
RESULT_NAMES = {"games-lcrec": "games"}  # dataset name -> results/classic-<name>.json


def evaluate(model, examples: Examples, k: int, ranks: dict[str, np.ndarray] | None = None,
             ) -> dict[str, dict[str, float]]:
    """HR/NDCG@K of ``model`` on ``examples``, on its own ranking and with each request's history
    removed; with a ``ranks`` dict, also puts there per view each request's 0-based first-hit rank
    among the top ``k`` (-1: none), for paired comparisons (``compare_games.py``)."""
    start = time.perf_counter()
    ranked = model.rank(examples, k + examples.max_history)
    seconds = time.perf_counter() - start
    hits = {"own_ranking": hits_from_ranked(ranked[:, :k], examples.target),
            "history_excluded": hits_from_ranked(without_history(ranked, examples, k), examples.target)}
    if ranks is not None:
        ranks.update({view: first_hit_ranks(h) for view, h in hits.items()})
    return {**{view: ranking_metrics(h) for view, h in hits.items()}, "rank_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="a name or folder for recgym.data.load")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default: benchmarks/results/classic-<dataset name>.json")
    args = parser.parse_args()

    ds = load(args.dataset)
    n = ds.catalogue.num_items
    k = max(KS)
    results: dict = {
        "dataset": ds.name, "source": args.dataset if ds.name == "synthetic" else ds.info.get("source"),
        "split": ds.info.get("split"), "items": n,
        "examples": {s: len(ds.split(s)) for s in ("train", "valid", "test")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "numpy": np.__version__},
        "models": {},
    }
    config = SASRecConfig(
        hidden=args.hidden, blocks=args.blocks, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        patience=args.patience, seed=args.seed, device=args.device, num_threads=args.num_threads,
    )
    models = {
        "popularity": (PopularityRecommender(), {}),
        "transition": (TransitionRecommender(), {}),
        # exclude_history=False: evaluate() applies the exclusion itself, the same way for every model.
        "sasrec": (SASRecRecommender(config, exclude_history=False), {"valid": ds.valid}),
    }
    for name, (model, extra) in models.items():
        start = time.perf_counter()
        model.fit(ds.train, n, **extra)
        fit_seconds = time.perf_counter() - start
        entry = {"fit_seconds": fit_seconds, **evaluate(model, ds.test, k)}
        if isinstance(model, SASRecRecommender):
            entry["config"] = asdict(model.config)
            entry["best_epoch"] = model.best_epoch_
            entry["epochs_run"] = len(model.log_)
            entry["log"] = model.log_
        results["models"][name] = entry
        print(f"{name}: fit {fit_seconds:.1f} s, test HR@10 {entry['own_ranking']['HR@10']:.4f} "
              f"(history excluded {entry['history_excluded']['HR@10']:.4f})", flush=True)

    for view in ("own_ranking", "history_excluded"):
        print(f"\n{ds.name} test, {view}:")
        print(format_table({name: e[view] for name, e in results["models"].items()}))
    short = RESULT_NAMES.get(ds.name, Path(ds.name).name)
    out = Path(args.out or Path(__file__).parent / "results" / f"classic-{short}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
