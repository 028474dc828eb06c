"""How many of the request's own history items a Games SFT policy puts in its top K.

On LC-Rec Games no test target is in its request's history, so every history item in a policy's
top K is a slot lost under the reference protocol (which ranks every catalogue item), and the
reason its NDCG@10 rises when the search excludes the history (``evaluate(...,
exclude_history=True)``). For each recipe of ``sweep_sft_games.py`` named with ``--config`` whose
run folder holds best weights, this searches a seeded sample of test requests (beam 50, reference
scoring, the same sample as ``bench_sft_games.py``) and reports, over those requests, the mean
number of history items among the top ``--k`` and the share of requests with at least one.
Writes ``benchmarks/results/history-in-topk.json``.

    RECGYM_DATA_PATH=../shared/data python benchmarks/bench_history_in_topk.py \\
        --config h128-atomic-d0.3 h128-atomic-d0.3-untied --requests 2000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_sft_games import trained_run  # noqa: E402

from agents.training.evaluate import select_rows  # noqa: E402
from agents.training.tracking import write_atomically  # noqa: E402
from recgym.envs import RecGenTask  # noqa: E402


def history_in_topk(policy, task: RecGenTask, rows: np.ndarray, k: int, beam: int = 50,
                    batch: int = 16) -> np.ndarray:
    """Per request of ``rows``: how many of the top-``k`` beam outputs denote an item of its history.

    Example:
        >>> # counts = history_in_topk(policy, test_task, np.arange(100), k=10)
    """
    ex = task.examples
    counts = np.zeros(len(rows), dtype=np.int64)
    for start in tqdm(range(0, len(rows), batch), desc="search", leave=False):
        part = rows[start:start + batch]
        terminals, _ = policy.beam_search(*task.prompt_tokens(part), width=beam, k=k)
        # an output is a history item when any item it denotes is in the request's window (-1 padded)
        offsets, values = task.tree.items_batch(np.maximum(terminals, task.tree.root).reshape(-1))
        owner = np.repeat(np.arange(terminals.size), np.diff(offsets))
        history = ex.history[part].repeat(k, axis=0)[owner]  # (items, max_history)
        seen = np.zeros(terminals.size, dtype=bool)
        np.logical_or.at(seen, owner, (history == values[:, None]).any(axis=1))
        counts[start:start + len(part)] = (seen.reshape(terminals.shape) & (terminals >= 0)).sum(axis=1)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="sweep recipes with trained run folders")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/history-in-topk.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.config:
        train, _, policy, cfg = trained_run(name)
        test = RecGenTask(train.dataset, split="test", tokenizer=train.items)
        rows = select_rows(test.num_requests, args.requests, seed=0)
        with torch.no_grad():
            counts = history_in_topk(policy, test, rows, args.k)
        results[name] = {"settings": cfg, "requests": len(rows), "sample_seed": 0, "k": args.k, "beam": 50,
                         f"history_items_in_top{args.k}_mean": float(counts.mean()),
                         "requests_with_one_or_more": float((counts > 0).mean())}
        print(f"{name}: {counts.mean():.2f} history items in the top {args.k} on average; "
              f"{(counts > 0).mean():.1%} of requests hold one or more", flush=True)
        write_atomically(out, json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
