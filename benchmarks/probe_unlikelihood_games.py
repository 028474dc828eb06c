"""How strongly unlikelihood must act to move history items out of a Games policy's top 10.

Full runs cost an hour each here, so this probes the question cheaply: from one trained policy
(``--policy``, e.g. the ``cpu`` preset's SFT), each ``--alpha`` fine-tunes one more epoch of
sequence-level SFT with that unlikelihood weight (alpha 0 is the control: the same extra epoch of
plain NLL), at a low rate, with the recipe's dropout and weight decay; then it measures, on the
same seeded samples, the mean number of the request's own items in the top 10 of 2,000 test
requests (``bench_history_in_topk.history_in_topk``) and NDCG@10 on ``--valid-requests`` valid
requests (beam 50, reference scoring), paired against alpha 0 (bootstrap, 95%). Valid only: no
test metric is read here, so nothing is chosen on test. Writes
``benchmarks/results/unlikelihood-probe-games.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/probe_unlikelihood_games.py \\
        --policy runs/games-sft-atomic/best --alpha 0 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_history_in_topk import history_in_topk  # noqa: E402
from sweep_sft_games import build_run  # noqa: E402

from agents.model.policy import LLMPolicy  # noqa: E402
from agents.training.evaluate import evaluate, select_rows  # noqa: E402
from agents.training.sft import train_sft  # noqa: E402
from agents.training.tracking import write_atomically  # noqa: E402
from recgym.envs import RecGenTask  # noqa: E402
from recgym.metrics import paired_bootstrap, request_gains  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="a trained one-token-per-item Games policy folder")
    parser.add_argument("--recipe", default="h128-atomic-d0.3-wd0.1",
                        help="the sweep recipe it was trained with")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--valid-requests", type=int, default=5000)
    parser.add_argument("--test-requests", type=int, default=2000, help="for the history count only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/unlikelihood-probe-games.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"alphas": {}}
    ranks: dict[str, np.ndarray] = {}
    recipe_train, _, _, recipe_cfg, _, _ = build_run(args.recipe, args.valid_requests, 1, 0)  # data, settings
    for alpha in args.alpha:
        policy = LLMPolicy.from_pretrained(args.policy)  # with its own tokenizer (e.g. `recgym sft`'s)
        train, valid, test = (RecGenTask(recipe_train.dataset, split=split, tokenizer=policy.items)
                              for split in ("train", "valid", "test"))
        # one more epoch: warm-up 20 steps, cosine from lr; no valid task, so no validation inside
        cfg = replace(recipe_cfg, epochs=1, lr=args.lr, warmup_steps=20, unlikelihood=alpha,
                      eval_requests=None, patience=0, progress=True)
        start = time.time()
        train_sft(policy, train, None, cfg)
        seconds = time.time() - start
        policy.model.eval()
        with torch.no_grad():
            rows = select_rows(test.num_requests, args.test_requests, seed=0)
            counts = history_in_topk(policy, test, rows, 10)
            m = evaluate(policy, valid, beam=50, max_requests=args.valid_requests, seed=0, per_request=True)
        ranks[str(alpha)] = np.asarray(m.pop("first_hit_ranks"))
        m.pop("rows")
        results["alphas"][str(alpha)] = {
            "finetune": {**asdict(cfg), "seconds": round(seconds, 1)}, "valid": m,
            "history_items_in_top10_mean": float(counts.mean()),
            "requests_with_one_or_more": float((counts > 0).mean())}
        print(f"alpha {alpha}: valid NDCG@10 {m['NDCG@10']:.4f}, {counts.mean():.2f} history items in the "
              f"top 10 ({(counts > 0).mean():.1%} of requests hold one)", flush=True)
        write_atomically(out, json.dumps(results, indent=2))
    base = str(args.alpha[0])
    results.update(start=args.policy, recipe=args.recipe, valid_requests=args.valid_requests, paired_vs=base,
                   paired={a: {k: paired_bootstrap(request_gains(ranks[a], k), request_gains(ranks[base], k))
                               for k in ("NDCG@10", "HR@10")} for a in ranks if a != base})
    write_atomically(out, json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
