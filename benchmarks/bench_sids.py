"""Semantic IDs from item text: ours (RQ-KMeans over all-MiniLM-L6-v2 embeddings) vs MiniOneRec's vs
random SIDs of the same shape, on the real Office and Industrial catalogues (D3 format).

For ``office-d3`` and ``industrial-d3`` in the shared data folder:

* **theirs**: ``minionerec/index/<Cat>.index.json``, the 3-level x 256-code SIDs MiniOneRec ships
  (RQ on Qwen embeddings of title + description), in MiniOneRec's item-id space.
* **random**: uniform codes, 3 levels x 256 (the shape of theirs and of our levels before
  collision handling).
* **ours**: :func:`agents.model.encoders.build_sids_for_dataset`'s steps on the D3 catalogue, for
  text = title, or title + MiniOneRec's description (``<Cat>.item.json``, bridged to D3 ids; texts
  cut at ``--desc-max-length`` tokens), RQ-KMeans plain or balanced, collisions by an extra level
  (TIGER) or Sinkhorn (LETTER / MiniOneRec). 3 levels x 256 codes, seed 0.

Reported per SID set: collision rate (``1 - distinct / items``) before and after handling,
codes used / utilisation / perplexity per level, and *prefix coherence*: the mean cosine
similarity of item pairs that share their first 1 or 2 codes minus that of all pairs, judged by
all-MiniLM-L6-v2 title embeddings (the embeddings ours are built from, so this measure favours ours;
it is there to show that random SIDs carry no meaning and how much MiniOneRec's carry in a neutral
text space). MiniOneRec's ids are bridged to D3 ids by aligning the rows of the two published CSVs
(the rows are the same, in the same order), then by unique titles.

**Timing**: SIDs for the first 10,000 items of the Toys catalogue (``toys-d3``, real titles), for
every method; encoding is timed separately (and cached).

**HR / NDCG** (``--train``): a tiny Qwen2-architecture policy (``LLMPolicy.from_config("tiny")``)
fine-tuned with :func:`agents.training.sft.train_sft` on the valid split (the published D3 data has no
train split) and scored with :func:`agents.training.evaluate.evaluate` on the test split, once per SID set
(random + extra level; theirs bridged to D3 ids, plus an extra level for their few collisions;
ours from titles, plain and balanced, Sinkhorn de-collision). Small sizes; run with OMP_NUM_THREADS=1.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_sids.py [--train] [--output-dir benchmarks/results]``.
Embeddings are cached (``--cache-dir``, default ``recgym.data.data_dir()/embeddings``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.model.encoders import embed_texts, item_texts, item_texts_from_json, load_encoder
from recgym.data import Catalogue, Dataset, read_d3
from recgym.sids import build_sid_index, extra_level, random_sids, read_sid_index, sid_stats, with_sid_index

CATEGORIES = {"office-d3": "Office_Products", "industrial-d3": "Industrial_and_Scientific"}
LEVELS, CODES, SEED = 3, 256, 0
METHODS = [(balanced, collisions) for balanced in (False, True) for collisions in ("extra_level", "sinkhorn")]


def default_data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("RECGYM_SHARED_DATA", default))


def minionerec_files(folder: Path, category: str) -> dict[str, Path]:
    mo = folder / "minionerec"
    files = {
        "index": mo / "index" / f"{category}.index.json",
        "item": mo / "index" / f"{category}.item.json",
        "valid": next((mo / "valid").glob("*.csv")),
        "test": next((mo / "test").glob("*.csv")),
    }
    for path in files.values():
        if not path.is_file():
            sys.exit(f"error: {path} not found (MiniOneRec's files; see the shared data README)")
    return files


def minionerec_rows(path: Path) -> tuple[list[list[int]], list[int]]:
    histories, targets = [], []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            histories.append([int(x) for x in ast.literal_eval(row["history_item_id"])])
            targets.append(int(row["item_id"]))
    return histories, targets


def id_bridge(ds: Dataset, files: dict[str, Path], mo_titles: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """D3 item id -> MiniOneRec item id (-1 where unknown): aligned CSV rows, then unique titles."""
    n = ds.catalogue.num_items
    bridge = np.full(n, -1, dtype=np.int64)
    conflicts = 0
    for split in ("valid", "test"):
        histories, targets = minionerec_rows(files[split])
        ex = ds.split(split)
        if len(targets) != len(ex):
            sys.exit(f"error: {files[split]} has {len(targets)} rows, the D3 {split} split {len(ex)}")
        for d3_hist, d3_len, d3_target, mo_hist, mo_target in zip(
            ex.history, ex.history_len, ex.target, histories, targets
        ):
            pairs = list(zip(d3_hist[:d3_len].tolist(), mo_hist[-int(d3_len) :])) + [
                (int(d3_target), mo_target)
            ]
            for a, b in pairs:
                if bridge[a] == -1:
                    bridge[a] = b
                elif bridge[a] != b:
                    conflicts += 1
    by_rows = int((bridge >= 0).sum())
    mo_by_title: dict[str, list[int]] = {}
    for i, t in enumerate(mo_titles):
        mo_by_title.setdefault(t.strip(), []).append(i)
    used = set(bridge[bridge >= 0].tolist())
    for item in np.flatnonzero(bridge < 0).tolist():
        cands = [c for c in mo_by_title.get(ds.catalogue.titles[item].strip(), []) if c not in used]
        if len(cands) == 1:
            bridge[item] = cands[0]
            used.add(cands[0])
    return bridge, {
        "by_rows": by_rows,
        "by_title": int((bridge >= 0).sum()) - by_rows,
        "unmapped": int((bridge < 0).sum()),
        "row_conflicts": conflicts,
    }


def coherence(codes: np.ndarray, emb: np.ndarray, depth: int) -> float:
    """Mean cosine of item pairs sharing their first ``depth`` codes, minus the mean over all pairs."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(x)
    total = x.sum(axis=0)
    all_pairs = (total @ total - n) / (n * (n - 1))
    _, group = np.unique(codes[:, :depth], axis=0, return_inverse=True)
    group = group.reshape(-1)
    sums = np.zeros((group.max() + 1, x.shape[1]))
    np.add.at(sums, group, x)
    sizes = np.bincount(group)
    pairs = float((sizes * (sizes - 1)).sum())
    within = (np.einsum("ij,ij->i", sums, sums) - sizes).sum() / pairs if pairs else float("nan")
    return round(float(within - all_pairs), 4)


def describe(codes: np.ndarray, sizes: list[int], judge: np.ndarray | None = None) -> dict[str, Any]:
    out = sid_stats(codes, sizes)
    if judge is not None:
        out["coherence_level1"] = coherence(codes, judge, 1)
        out["coherence_level2"] = coherence(codes, judge, 2)
    return out


def run_dataset(name: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = data_dir / name
    category = CATEGORIES[name]
    ds = read_d3(folder, name=name)
    files = minionerec_files(folder, category)
    n = ds.catalogue.num_items
    mo_codes = read_sid_index(files["index"])
    mo_info = json.loads(files["item"].read_text(encoding="utf-8"))
    mo_titles = [mo_info[str(i)]["title"] for i in range(len(mo_codes))]
    bridge, bridge_info = id_bridge(ds, files, mo_titles)
    print(f"{name}: {n} items; bridge to MiniOneRec ids {bridge_info}", flush=True)
    mapped = bridge >= 0

    titles = item_texts(ds)
    mo_desc = item_texts_from_json(files["item"])
    desc = {int(i): mo_desc.get(int(b), "") for i, b in enumerate(bridge) if b >= 0}
    with_desc = item_texts(ds, desc)
    texts = {"title": (titles, None), "title+description": (with_desc, args.desc_max_length)}
    embeddings, encode_s = {}, {}
    for key, (txt, max_length) in texts.items():
        t = time.perf_counter()
        embeddings[key] = embed_texts(
            txt,
            load_encoder(args.encoder, max_length=max_length),
            cache_dir=args.cache_dir,
            progress=args.progress,
        )
        encode_s[key] = round(time.perf_counter() - t, 2)
    judge = embeddings["title"]
    unit = judge / np.linalg.norm(judge, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1.0)
    nearest = similarity.max(axis=1)

    result: dict[str, Any] = {
        "dataset": name,
        "items": n,
        "items_with_a_near_duplicate_title (MiniLM cosine >= t)": {
            str(t): int((nearest >= t).sum()) for t in (0.9, 0.95, 0.99)
        },
        "encoder": args.encoder,
        "bridge": bridge_info,
        "encode_s (0 when cached)": encode_s,
        "theirs": {
            "source": str(files["index"].relative_to(data_dir)),
            **describe(mo_codes, [CODES] * 3),
            **{
                k: v
                for k, v in describe(mo_codes[bridge[mapped]], [CODES] * 3, judge[mapped]).items()
                if k.startswith("coherence")
            },
        },
        "random": describe(random_sids(n, [CODES] * LEVELS, seed=SEED), [CODES] * LEVELS, judge),
        "ours": {},
    }
    ours: dict[str, np.ndarray] = {}
    for key, emb in embeddings.items():
        for balanced, collisions in METHODS:
            label = f"{key} | {method_label(balanced, collisions)}"
            try:
                index = build_method(emb, balanced, collisions, args)
            except ValueError as err:  # e.g. a prefix larger than the codebook for Sinkhorn
                result["ours"][label] = {"error": str(err)}
                print(f"  {label}: {err}", flush=True)
                continue
            rep = index.report
            entry = {
                "collision_rate_before": rep["collision_rate_before"],
                "collision_rate_after": rep["collision_rate_after"],
                # levels 1-2 are the same before and after either handling
                "before": {
                    **rep["before"],
                    "coherence_level1": coherence(index.codes, judge, 1),
                    "coherence_level2": coherence(index.codes, judge, 2),
                },
                "after": rep["after"],
                "relative_reconstruction_error": round(rep["relative_reconstruction_error"], 4),
                "time_s": rep["time_s"],
            }
            if collisions == "sinkhorn":
                entry["sinkhorn_items_moved"] = rep["sinkhorn"]["items_moved"]
            result["ours"][label] = entry
            print(
                f"  {label}: collisions {rep['collision_rate_before']:.4f} -> "
                f"{rep['collision_rate_after']:.4f}, "
                f"perplexity {entry['before']['perplexity']}, coherence L1 "
                f"{entry['before']['coherence_level1']} L2 {entry['before']['coherence_level2']}, "
                f"time {rep['time_s']['total']} s",
                flush=True,
            )
            if key == "title" and collisions == "sinkhorn":
                ours[f"ours (title, {'balanced' if balanced else 'plain'}, sinkhorn)"] = index.codes
    if args.train:
        theirs_d3 = _theirs_in_d3_ids(mo_codes, bridge)
        sets = {
            "random+extra_level": extra_level(random_sids(n, [CODES] * LEVELS, seed=SEED)),
            "theirs": theirs_d3,
        }
        sets.update(ours)
        result["training"] = run_training(ds, sets, args)
    return result


def _theirs_in_d3_ids(mo_codes: np.ndarray, bridge: np.ndarray) -> np.ndarray:
    """MiniOneRec's SIDs in D3 ids; unmapped items get distinct unused last-level codes; then an
    extra level separates MiniOneRec's own collisions (so every D3 item has a distinct SID)."""
    codes = np.zeros((len(bridge), mo_codes.shape[1]), dtype=np.int64)
    mapped = bridge >= 0
    codes[mapped] = mo_codes[bridge[mapped]]
    used = {tuple(c) for c in codes[mapped].tolist()}
    fresh = (tuple(c) for c in np.ndindex(*([CODES] * mo_codes.shape[1])) if tuple(c) not in used)
    for item in np.flatnonzero(~mapped).tolist():
        codes[item] = next(fresh)
    return extra_level(codes)


def run_training(ds: Dataset, sets: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """SFT a tiny policy on the valid split per SID set; HR / NDCG on the test split."""
    import torch

    from agents.configs import SFTConfig
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate
    from agents.training.sft import train_sft
    from recgym.envs import RecGenTask

    torch.manual_seed(0)
    out: dict[str, Any] = {
        "train_split": "valid",
        "eval_split": "test",
        "preset": "tiny",
        "max_steps": args.train_steps,
        "batch_size": args.train_batch,
        "eval_requests": args.eval_requests,
        "beam": 20,
    }
    for label, codes in sets.items():
        data = with_sid_index(ds, codes)
        train = RecGenTask(data, split="valid", representation="sid", vocab_size=1024)
        test = RecGenTask(data, split="test", tokenizer=train.items)
        policy = LLMPolicy.from_config("tiny", train.items, seed=0, device="cpu")
        t = time.perf_counter()
        summary = train_sft(
            policy,
            train,
            None,
            SFTConfig(
                epochs=math.ceil(args.train_steps * args.train_batch / train.num_requests),
                max_steps=args.train_steps,
                batch_size=args.train_batch,
                progress=args.progress,
            ),
        )
        metrics = evaluate(
            policy, test, beam=20, ks=(1, 5, 10, 20), max_requests=args.eval_requests, progress=args.progress
        )
        out[label] = {
            "metrics": metrics,
            "train_s": round(time.perf_counter() - t, 1),
            "sft_steps": summary.get("steps"),
        }
        print(f"  train {label}: {metrics}", flush=True)
    return out


def method_label(balanced: bool, collisions: str) -> str:
    """``"plain | sinkhorn"``: how one of METHODS is named in the results."""
    return f"{'balanced' if balanced else 'plain'} | {collisions}"


def build_method(emb: np.ndarray, balanced: bool, collisions: str, args: argparse.Namespace) -> Any:
    """Our SIDs for ``emb`` by one of METHODS, at the benchmark's L x K and seed."""
    return build_sid_index(emb, levels=LEVELS, codes=CODES, balanced=balanced, collisions=collisions,
                           seed=SEED, progress=args.progress)


def run_timing(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = next(iter(sorted((data_dir / "toys-d3").rglob("*.txt"))), None)
    if path is None:
        sys.exit(f"error: no toys-d3 catalogue in {data_dir} (the timing uses its real titles)")
    lines = path.read_text(encoding="utf-8").splitlines()[: args.timing_items]
    titles = [line.rsplit("\t", 1)[0] for line in lines]  # two Toys titles contain a TAB
    texts = item_texts(Catalogue(len(titles), titles=titles))
    t = time.perf_counter()
    emb = embed_texts(texts, args.encoder, cache_dir=args.cache_dir, progress=args.progress)
    encode_s = round(time.perf_counter() - t, 2)
    out: dict[str, Any] = {
        "catalogue": str(path.relative_to(data_dir)),
        "items": len(texts),
        "encode_s (0 when cached)": encode_s,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "levels": LEVELS,
        "codes": CODES,
    }
    for balanced, collisions in METHODS:
        label = method_label(balanced, collisions)
        index = build_method(emb, balanced, collisions, args)
        out[label] = {
            "time_s": index.report["time_s"],
            "collision_rate_before": index.report["collision_rate_before"],
            "collision_rate_after": index.report["collision_rate_after"],
        }
        print(f"timing {len(texts)} items, {label}: {index.report['time_s']}", flush=True)
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        sets = {"theirs (MiniOneRec)": res["theirs"], "random": res["random"]}
        for label, entry in res["ours"].items():
            if "error" not in entry:
                sets[f"ours: {label}"] = {
                    **entry["before"],
                    "collision_rate_after": entry["collision_rate_after"],
                }
        names = list(sets)
        y = np.arange(len(names))
        row[0].barh(
            y, [s["collision_rate"] for s in sets.values()], color="tab:orange", label="before handling"
        )
        row[0].barh(
            y,
            [s.get("collision_rate_after", s["collision_rate"]) for s in sets.values()],
            color="tab:blue",
            label="after handling (theirs, random: as shipped)",
        )
        row[0].set_yticks(y, names, fontsize=7)
        row[0].set_title(f"{res['dataset']}: collision rate")
        row[0].legend(fontsize=7, loc="lower right")
        for lvl in range(LEVELS):
            row[1].barh(
                y + (lvl - 1) * 0.27,
                [s["perplexity"][lvl] for s in sets.values()],
                height=0.27,
                label=f"level {lvl + 1}",
            )
        row[1].set_yticks(y, [""] * len(names))
        row[1].set_title("code perplexity per level (max 256)")
        row[1].legend(fontsize=7)
        row[2].barh(
            y - 0.2, [s["coherence_level1"] for s in sets.values()], height=0.4, label="shared 1st code"
        )
        row[2].barh(
            y + 0.2, [s["coherence_level2"] for s in sets.values()], height=0.4, label="shared 2 codes"
        )
        row[2].set_yticks(y, [""] * len(names))
        row[2].set_title("prefix coherence (cosine gain, MiniLM titles)")
        row[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--datasets", nargs="*", default=list(CATEGORIES), choices=list(CATEGORIES))
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="embedding cache (default: recgym data dir)"
    )
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--desc-max-length", type=int, default=128, help="tokens kept of title + description")
    parser.add_argument("--timing-items", type=int, default=10_000)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--train", action="store_true", help="also SFT + evaluate a tiny policy per SID set")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--eval-requests", type=int, default=1000)
    parser.add_argument("--progress", action="store_true", help="tqdm bars")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(
            f"error: {args.data} not found: pass --data or set RECGYM_SHARED_DATA to the shared data folder"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    import torch

    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    results = []
    for name in args.datasets:
        res = run_dataset(name, args.data, args)
        res["machine"] = machine
        _write_json(args.output_dir / f"sids-{name}.json", res)
        results.append(res)
    if results:
        plot(results, args.output_dir / "sids.png")
    if not args.no_timing:
        timing = run_timing(args.data, args)
        timing["machine"] = machine
        _write_json(args.output_dir / "sids-timing.json", timing)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
