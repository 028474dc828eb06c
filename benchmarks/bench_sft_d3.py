"""The Games SFT recipe on the D3 folders (office-d3, industrial-d3), beside SASRec with cross-entropy.

D3 publishes only valid and test, so valid is the training stand-in (as ReRe / MiniOneRec train on
it) and nothing is left to select on: both models train a fixed number of epochs and are tested
with their last weights. The policy is the `mini` model from scratch on the compact prompt over the
items' titles (``--ids atomic``: one token per item instead, ``sid_index="atomic"``, as the Games
one-token-per-item recipe; into ``sft-d3-atomic.json``), with the D3 window of 10 history items
(the folders' own), sequence-level SFT (the valid rows of a user chain: one stream per user),
dropout 0.2; tested on every test request by constrained beam search (width 50, reference
scoring). SASRec (cross-entropy, dropout 0.2, max_len 10) ranks the whole catalogue for the same
requests. Writes ``benchmarks/results/sft-d3.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_d3.py --datasets office-d3,industrial-d3
    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_sft_d3.py --ids atomic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classic_games import evaluate as rank_and_score  # noqa: E402

from agents.baselines import PopularityRecommender  # noqa: E402
from agents.baselines.sasrec import SASRecRecommender  # noqa: E402
from agents.model.policy import LLMPolicy  # noqa: E402
from agents.training.evaluate import evaluate, evaluate_ranker  # noqa: E402
from agents.training.sft import SFTConfig, train_sft  # noqa: E402
from recgym.envs import RecGenTask  # noqa: E402
from recgym.metrics import format_table  # noqa: E402


def run(name: str, args: argparse.Namespace) -> dict:
    """SFT and SASRec on one D3 folder, tested on its whole test split."""
    # one token per item (item i is <a_i>), as the Games one-token recipe, or the item's title
    atomic = args.ids == "atomic"
    writing = {"representation": "sid", "sid_index": "atomic"} if atomic else {"representation": "title"}
    train = RecGenTask(name, split="valid", template="compact", max_history=10, **writing)
    test = RecGenTask(train.dataset, split="test", tokenizer=train.items)
    ds = train.dataset
    policy = LLMPolicy.from_config("mini", train.items, seed=0)
    config = SFTConfig(epochs=args.epochs, batch_size=args.batch, lr=2e-3, warmup_steps=50, dropout=0.2,
                       patience=0, progress=False)
    tick = time.time()
    summary = train_sft(policy, train, None, config, run_dir=Path(args.runs) / name)
    sft_seconds = time.time() - tick
    tick = time.time()
    sft = evaluate(policy, test, beam=50, progress=False)
    test_seconds = time.time() - tick
    tick = time.time()
    sasrec = SASRecRecommender(loss="ce", dropout=0.2, epochs=args.sasrec_epochs, batch_size=64,
                               num_threads=1, progress=False).fit(ds.valid, ds.catalogue.num_items)
    sasrec_seconds = time.time() - tick
    scored = rank_and_score(sasrec, ds.test, 50)
    pop = evaluate_ranker(PopularityRecommender().fit(ds.valid, ds.catalogue.num_items), ds.test)
    print(name)
    print(format_table({"sft (mini)": sft, "sasrec own ranking": scored["own_ranking"],
                        "sasrec history excluded": scored["history_excluded"], "popularity": pop}))
    return {"items": ds.catalogue.num_items, "train_rows (valid)": train.num_requests,
            "test_requests": test.num_requests, "level": summary["level"], "sft_steps": summary["steps"],
            "sft_seconds": round(sft_seconds, 1), "sft_test_seconds": round(test_seconds, 1),
            "sasrec_seconds": round(sasrec_seconds, 1),
            "test": {"sft": sft, "sasrec_own_ranking": scored["own_ranking"],
                     "sasrec_history_excluded": scored["history_excluded"], "popularity": pop}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="office-d3,industrial-d3")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--sasrec-epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="windows per SFT step (about 1,900 an epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ids", choices=("title", "atomic"), default="title",
                        help="what the policy writes: the item's title, or one token per item")
    parser.add_argument("--runs", help="default: runs/sft-d3 (titles), runs/sft-d3-atomic")
    parser.add_argument("--out", help="default: benchmarks/results/sft-d3.json (titles), sft-d3-atomic.json")
    args = parser.parse_args()
    suffix = "" if args.ids == "title" else f"-{args.ids}"
    args.runs = args.runs or f"runs/sft-d3{suffix}"
    args.out = args.out or f"benchmarks/results/sft-d3{suffix}.json"
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.datasets.split(","):
        if name in results:
            continue
        results[name] = run(name, args)
        results["settings"] = {"epochs": args.epochs, "sasrec_epochs": args.sasrec_epochs,
                               "batch": args.batch, "model": "mini", "template": "compact", "ids": args.ids,
                               "max_history": 10, "dropout": 0.2,
                               "threads": args.threads, "torch": torch.__version__,
                               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
