"""Pick a Games SFT recipe on the whole valid split, never on test.

Each recipe's run keeps its best weights by NDCG@10 on a seeded sample of 2,000 valid requests
(beam 20), whose standard error (about .004) is as large as the differences between the recipes
compared here. This scores each named recipe's best weights on **every** valid request under the
reference protocol (beam 50, reference scoring), reports HR/NDCG@10 and @50, and pairs every recipe
with the first one named (:func:`recgym.metrics.paired_bootstrap` over the same requests, 95%). The
recipe with the highest valid NDCG@10 is the pick; its test number is then the one to quote, so
that choosing among several runs does not select on test. Writes
``benchmarks/results/sft-games-valid-selection.json`` (kept between calls: a recipe already scored
is not scored again).

    RECGYM_DATA_PATH=../shared/data python benchmarks/select_sft_games.py \\
        --config h128-atomic-d0.3 h256-atomic-d0.3 h128-atomic-d0.3-untied
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_sft_games import trained_run  # noqa: E402

from agents.training.evaluate import evaluate  # noqa: E402
from agents.training.tracking import write_atomically  # noqa: E402
from recgym.metrics import paired_bootstrap, request_gains  # noqa: E402

METRICS = ("NDCG@10", "HR@10", "NDCG@50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="sweep recipes with trained run folders; "
                        "the first is the reference of the paired differences")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/sft-games-valid-selection.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ranks_file = out.with_suffix(".ranks.npz")

    def load() -> tuple[dict, dict[str, np.ndarray]]:  # re-read before each write: calls may run side by side
        return (json.loads(out.read_text()) if out.exists() else {"recipes": {}},
                dict(np.load(ranks_file)) if ranks_file.exists() else {})

    saved, ranks = load()
    for name in args.config:
        if name in ranks:
            continue
        _, valid, policy, cfg = trained_run(name)
        m = evaluate(policy, valid, beam=50, per_request=True)
        saved, ranks = load()
        ranks[name] = np.asarray(m.pop("first_hit_ranks"), np.int8)
        m.pop("rows")
        saved["recipes"][name] = {"settings": cfg, "valid": m}
        print(f"{name}: valid NDCG@10 {m['NDCG@10']:.4f} HR@10 {m['HR@10']:.4f} ({m['requests']} requests)",
              flush=True)
        np.savez_compressed(ranks_file, **ranks)
        write_atomically(out, json.dumps(saved, indent=2))
    first = args.config[0]
    saved["paired_vs"] = first
    gains = {(n, m): request_gains(ranks[n], m) for n in args.config for m in METRICS}
    saved["paired"] = {n: {m: paired_bootstrap(gains[n, m], gains[first, m]) for m in METRICS}
                       for n in args.config[1:]}
    saved["pick"] = max(args.config, key=lambda n: saved["recipes"][n]["valid"]["NDCG@10"])
    write_atomically(out, json.dumps(saved, indent=2))
    for name, diff in saved["paired"].items():
        d = diff["NDCG@10"]
        print(f"{name} - {first}: valid NDCG@10 {d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
    print(f"pick (highest valid NDCG@10): {saved['pick']}; wrote {out}")


if __name__ == "__main__":
    main()
