"""SASRec on real Games (LC-Rec): cross-entropy over all items vs. the paper's BCE, test HR/NDCG@K.

Trains :class:`~agents.baselines.sasrec.SASRecRecommender` once per ``--losses`` entry at the same
settings, early-stopping on valid NDCG@10 over a seeded sample of ``--valid-requests`` valid
requests, then ranks the whole catalogue for every test request (50,546 on Games). Test metrics
come from ``bench_classic_games.evaluate``, so they read as ``classic-games.json`` does: the
model's own ranking, and with the request's history removed (the SASRec paper's protocol; no Games
user repeats an item), which is also how valid is scored for early stopping.

``--train-rows windows`` (the default) trains on one sequence per window of a user's train rows
(:func:`window_rows`: its latest row, and every ``--max-len``-th row before it), so each train
target is learned once per epoch after the history its own row has, as SASRec is run in the
literature (every position of a sequence is a target). ``--train-rows all`` trains on every train
row, as ``fit`` on the raw split does: each target then comes back once per later row of its user
that still holds it in its window (6.8x the targets an epoch on Games, at the same cost per target).
Reports training targets per second (non-padding positions, training loop only) and
wall time. Writes ``benchmarks/results/sasrec-games.json``, and beside it ``sasrec-games.ranks.npz``:
each model's first-hit rank (0-based, -1 beyond 50) of every test request in each view, which
``compare_games.py`` pairs with the SFT policy's. On one CPU thread (2-core machine, the
other core busy), hidden 64, batch 64: CE about 68 s an epoch (4.5k targets/s; the (positions x
16,859) logits dominate, and batch 64 keeps them in cache better than 128), BCE about 19 s.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sasrec_games.py --losses ce,bce \\
        --hidden 64 --blocks 2 --dropout 0.5 --lr 1e-3 --batch-size 64 --epochs 30 --patience 3

wrote ``sasrec-games.json``: test NDCG@10 .0527 for CE (best epoch 29 of 30), .0314 for BCE (best
26, stopped by patience at 29), both valid curves still rising. CE with ``--dropout 0.2`` learns far
faster: .0603 after 12 epochs, still rising (``sasrec-games-ce-dropout0.2-12epochs.json``), hence
the default 0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from bench_classic_games import evaluate

from agents.baselines.sasrec import LOSSES, SASRecConfig, SASRecRecommender, right_aligned
from recgym.data import Examples, load
from recgym.data.sequences import window_rows
from recgym.metrics import KS, format_table

REPORT_KS = (5, 10, 20, 50)


def training_targets(examples: Examples, max_len: int) -> int:
    """Non-padding positions SASRec learns from per epoch (rows with an empty history are skipped).

    Example:
        >>> training_targets(Examples.from_lists([[5, 1], [], [9]], [6, 7, 4], max_history=3), 1)
        2
    """
    keep = examples.history_len > 0
    _, positives = right_aligned(examples.history[keep], examples.history_len[keep], max_len,
                                 examples.target[keep])
    return int((positives > 0).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="games-lcrec", help="a name or folder for recgym.data.load")
    parser.add_argument("--max-len", type=int, default=20, help="history window (load's max_history)")
    parser.add_argument("--losses", default="ce,bce", help=f"comma-separated, of {LOSSES}")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--valid-requests", type=int, default=5000, help="0: the whole valid split")
    parser.add_argument("--train-rows", choices=("windows", "all"), default="windows")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sasrec-games.json"))
    args = parser.parse_args()
    losses = args.losses.split(",")
    for loss in losses:
        if loss not in LOSSES:
            parser.error(f"--losses: {loss!r} is not one of {LOSSES}")
    torch.set_num_threads(args.num_threads)

    start = time.perf_counter()
    ds = load(args.dataset, max_history=args.max_len)
    n = ds.catalogue.num_items
    # the rows SASRec trains on (it picks the windows itself: SASRecConfig.train_rows), for the counts
    train = ds.train if args.train_rows == "all" else ds.train.subset(window_rows(ds.train, args.max_len))
    valid = ds.valid
    if 0 < args.valid_requests < len(valid):
        rng = np.random.default_rng(args.seed)
        valid = valid.subset(np.sort(rng.choice(len(valid), args.valid_requests, replace=False)))
    targets = training_targets(train, args.max_len)
    results: dict = {
        "dataset": ds.name, "source": ds.info.get("source"), "split": ds.info.get("split"), "items": n,
        "examples": {"train": len(ds.train), "valid": len(ds.valid), "test": len(ds.test)},
        "train_rows": args.train_rows, "train_sequences": len(train), "train_targets_per_epoch": targets,
        "valid_requests": len(valid), "test_requests": len(ds.test),
        "protocol": "full ranking of the catalogue for every test request; early stopping on valid NDCG@10 "
                    "(history excluded) over the valid sample; the best epoch's weights are tested",
        "command": " ".join(["python", *sys.argv]), "RECGYM_DATA_PATH": os.environ.get("RECGYM_DATA_PATH"),
        "args": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "numpy": np.__version__, "threads": torch.get_num_threads()},
        "models": {},
    }
    print(f"{ds.name}: {len(train)} train sequences ({args.train_rows}), {targets} targets an epoch, "
          f"{len(valid)} valid, {len(ds.test)} test, {n} items", flush=True)

    per_request: dict[str, np.ndarray] = {}  # "sasrec-LOSS/VIEW" -> first-hit rank of every test request
    for loss in losses:
        config = SASRecConfig(
            hidden=args.hidden, blocks=args.blocks, heads=args.heads, dropout=args.dropout, loss=loss,
            max_len=args.max_len, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
            patience=args.patience, seed=args.seed, device=args.device, num_threads=args.num_threads,
            train_rows=args.train_rows, progress=True,  # tqdm on stderr: each epoch's loss and valid metrics
        )
        model = SASRecRecommender(config)  # exclude_history=True: valid is scored without history
        fit_start = time.perf_counter()
        model.fit(ds.train, n, valid=valid)
        fit_seconds = time.perf_counter() - fit_start
        train_seconds = sum(e["seconds"] for e in model.log_)
        # evaluate() ranks without exclusion and applies it itself, the same way as classic-games.
        model.config = replace(model.config, exclude_history=False)
        ranks: dict[str, np.ndarray] = {}
        scores = evaluate(model, ds.test, max(KS), ranks)
        per_request.update({f"sasrec-{loss}/{view}": r.astype(np.int8) for view, r in ranks.items()})
        results["models"][f"sasrec-{loss}"] = {
            "config": asdict(config), "epochs_run": len(model.log_), "best_epoch": model.best_epoch_,
            "best_valid_NDCG@10": model.best_valid_ndcg10_, "best_valid_HR@10": model.best_valid_hr10_,
            "fit_seconds": fit_seconds, "train_seconds": train_seconds,
            "train_targets_per_second": targets * len(model.log_) / train_seconds,
            **scores, "log": model.log_,
        }
        test = scores["history_excluded"]
        print(f"sasrec-{loss}: {len(model.log_)} epochs (best {model.best_epoch_}), fit {fit_seconds:.0f} s, "
              f"{targets * len(model.log_) / train_seconds:.0f} targets/s; test HR@10 {test['HR@10']:.4f} "
              f"NDCG@10 {test['NDCG@10']:.4f} (history excluded)", flush=True)
    results["wall_seconds"] = time.perf_counter() - start

    for view in ("history_excluded", "own_ranking"):
        print(f"\n{ds.name} test ({len(ds.test)} requests, full ranking), {view}:")
        print(format_table({name: e[view] for name, e in results["models"].items()}, ks=REPORT_KS))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    ranks_file = out.with_suffix(".ranks.npz")
    np.savez_compressed(ranks_file, **per_request)
    print(f"\nwrote {out} ({results['wall_seconds']:.0f} s) and {ranks_file.name} (first-hit ranks)")


if __name__ == "__main__":
    main()
