"""Sweep of from-scratch SFT recipes on real Games (LC-Rec SIDs): quality per wall-minute on this CPU.

Each configuration trains a fresh Qwen2-architecture model with the project's own SFT
(:func:`agents.training.sft.train_sft`: compact prompt, sequence level unless a config says otherwise),
validates NDCG@10 on a seeded sample of the valid split (beam 20) every ``--evals-per-epoch``
fraction of an epoch with early stopping, and records the curve (valid NDCG@10 against training
seconds, validation time excluded) and the steps per second. Runs live in ``--runs/<name>`` and
resume where they stopped (``train_sft``'s checkpoints); a finished configuration has its JSON in
``benchmarks/results/sft-sweep-games/`` and is skipped, so the sweep can be killed and rerun, and two
sweeps over different configurations can share the folder (one per core). ``curves.png`` there
draws every finished configuration.

    RECGYM_DATA_PATH=../shared/data python benchmarks/sweep_sft_games.py --configs tiny-seq,h128-seq

One thread (``torch.set_num_threads(1)``): two sweeps or a sweep and the tests can share 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from agents.configs import MODEL_PRESETS
from agents.model.policy import LLMPolicy
from agents.training.sft import SFTConfig, SFTObjective, sft_objective, train_sft
from agents.training.tracking import MetricLogger, write_atomically
from recgym.envs import RecGenTask

SIZES: dict[str, dict[str, Any]] = {
    "h64": MODEL_PRESETS["tiny"],
    "h128": MODEL_PRESETS["mini"],
    "h128x4": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2},
    "h256": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 8,
             "num_key_value_heads": 4},
    # mini with its own output embedding (untied): with one token per item an item's input and output
    # rows need not be one vector, so the request's own items need not score high
    "h128-untied": {**MODEL_PRESETS["mini"], "tie_word_embeddings": False},
}

BASE: dict[str, Any] = {"size": "h64", "template": "compact", "level": "auto", "max_history": 20,
                        "batch": 128, "lr": 3e-3, "epochs": 10, "dropout": 0.0, "weight_decay": 0.01,
                        "warmup": 100, "ids": "sid", "unlikelihood": 0.0}
# name -> the settings that differ from BASE
CONFIGS: dict[str, dict[str, Any]] = {
    # batch 128 windows (~720 targets): 418 updates an epoch
    "h64-seq": {},
    "h128-seq-d0.2": {"size": "h128", "dropout": 0.2, "lr": 2e-3},
    # batch 32 windows (~180 targets, about a per-request batch of 128): 1,670 updates an epoch
    "h256-seq-d0.3": {"size": "h256", "dropout": 0.3, "lr": 1e-3},
    "h256-seq-d0.2": {"size": "h256", "dropout": 0.2, "lr": 1e-3},
    # SASRec-style regularisation and length: strong dropout, many epochs
    "h64-seq-d0.3-e30": {"dropout": 0.3, "epochs": 30},
    "h64-seq-d0.1-e30": {"dropout": 0.1, "epochs": 30},
    "h128-seq-d0.3-lr3e-3": {"size": "h128", "dropout": 0.3},
    "h64-b32-d0.1": {"batch": 32, "dropout": 0.1, "epochs": 20},
    "h128-b32-d0.2": {"size": "h128", "batch": 32, "dropout": 0.2, "lr": 2e-3, "epochs": 20},
    "h128-b32-d0.1-lr1e-3": {"size": "h128", "batch": 32, "dropout": 0.1, "lr": 1e-3, "epochs": 20},
    "h256-b32-d0.3": {"size": "h256", "batch": 32, "dropout": 0.3, "lr": 1e-3, "epochs": 20},
    "h128-b32-d0.2-h10": {"size": "h128", "batch": 32, "dropout": 0.2, "lr": 2e-3, "epochs": 20,
                          "max_history": 10},
    "h64-request": {"level": "request", "epochs": 2},
    # one token per item instead of LC-Rec's 4 SID codes: the same decoder and recipe without composing
    # an item from codes (what SASRec scores), to measure how much of the gap to SASRec the codes are
    "h128-atomic-d0.2": {"size": "h128", "dropout": 0.2, "lr": 2e-3, "ids": "atomic"},
    # its curve still rose at epoch 10: the same recipe over 20 epochs (cosine decay over all 20)
    "h128-atomic-d0.2-e20": {"size": "h128", "dropout": 0.2, "lr": 2e-3, "ids": "atomic", "epochs": 20},
    # ... which peaked after 8 epochs and fell as the rate decayed (overfitting): stronger dropout, 10 epochs
    "h128-atomic-d0.3": {"size": "h128", "dropout": 0.3, "lr": 2e-3, "ids": "atomic"},
    # ... which landed level with dropout 0.2: twice the width (item embeddings of 256), the SID h256 rate
    "h256-atomic-d0.3": {"size": "h256", "dropout": 0.3, "lr": 1e-3, "ids": "atomic"},
    # ... and the same model with ten times the weight decay (AdamW, every weight incl. the item rows)
    "h128-atomic-d0.3-wd0.1": {"size": "h128", "dropout": 0.3, "lr": 2e-3, "ids": "atomic",
                               "weight_decay": 0.1},
    # ... whose top 10 holds one of the request's own items on average (history excluded it tests
    # .0571 instead of .0493): the same recipe with untied input and output item embeddings
    "h128-atomic-d0.3-untied": {"size": "h128-untied", "dropout": 0.3, "lr": 2e-3, "ids": "atomic"},
    # ... which does not stop it (0.87 own items in the top 10) and tests lower: the weight-decay
    # recipe with unlikelihood (alpha 1, Welleck et al. 2020) on each target's history items, so that
    # training itself learns that an item of the history does not come next
    "h128-atomic-d0.3-wd0.1-ul1": {"size": "h128", "dropout": 0.3, "lr": 2e-3, "ids": "atomic",
                                   "weight_decay": 0.1, "unlikelihood": 1.0},
}


def build_run(name: str, eval_requests: int, evals_per_epoch: int, patience: int, seed: int = 0,
              progress: bool = False,
              ) -> tuple[RecGenTask, RecGenTask, LLMPolicy, SFTConfig, dict[str, Any], SFTObjective]:
    """(train task, valid task, fresh policy, SFT config, settings, SFT objective) of recipe ``name``:
    the one place a recipe becomes a run, so ``bench_sft_games.py`` resumes or reuses a sweep's run
    folder."""
    cfg = {**BASE, **CONFIGS[name]}
    train = RecGenTask("games-lcrec", split="train", representation="sid", template=cfg["template"],
                       max_history=cfg["max_history"], vocab_size=257,
                       sid_index="atomic" if cfg["ids"] == "atomic" else None)  # atomic: item i is <a_i>
    valid = RecGenTask(train.dataset, split="valid", tokenizer=train.items)
    policy = LLMPolicy.from_config(SIZES[cfg["size"]], train.items, seed=seed)
    objective = sft_objective(policy, train, cfg["level"], cfg["unlikelihood"])
    steps_per_epoch = -(-objective.size // cfg["batch"])
    config = SFTConfig(
        epochs=cfg["epochs"], batch_size=cfg["batch"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
        warmup_steps=cfg["warmup"], eval_every=max(1, steps_per_epoch // evals_per_epoch),
        eval_requests=eval_requests, beam=20, patience=patience, seed=seed,
        dropout=cfg["dropout"], level=cfg["level"], progress=progress, unlikelihood=cfg["unlikelihood"])
    return train, valid, policy, config, cfg, objective


def trained_run(
    name: str, runs: str = "runs/sft-sweep",
) -> tuple[RecGenTask, RecGenTask, LLMPolicy, dict[str, Any]]:
    """(train task, valid task, policy with its best weights, settings) of recipe ``name``'s trained run
    folder; a SystemExit names the folder when it holds no best weights yet."""
    from agents.training.checkpoint import load_weights

    if name not in CONFIGS:
        raise SystemExit(f"--config {name}: unknown recipe; choose from {', '.join(CONFIGS)}")
    train, valid, policy, _, cfg, _ = build_run(name, 2000, 1, 0)
    best = Path(runs) / name / "best"
    if not best.exists():
        raise SystemExit(f"--config {name}: no trained weights in {best} (run bench_sft_games.py first)")
    load_weights(policy, best)
    policy.model.eval()
    return train, valid, policy, cfg


def curve_of(run: Path, steps_per_epoch: int) -> list[dict[str, Any]]:
    """Valid NDCG@10 / HR@10 (and the last logged training loss) against training seconds from a
    run's ``metrics.jsonl``.

    The log's clock restarts when a run resumes, so segments are added up; the time between two
    records that ends in a validation is that validation's and is left out.
    """
    curve, base, eval_seconds, last_time, loss = [], 0.0, 0.0, 0.0, None
    for r in MetricLogger.read(run):
        loss = r.get("loss", loss)
        if r["time"] < last_time:  # a resumed segment: its clock starts again at 0
            base += last_time
            last_time = 0.0
        if "valid/NDCG@10" in r:
            eval_seconds += r["time"] - last_time
            curve.append({"step": r["step"], "epoch": round(r["step"] / steps_per_epoch, 3),
                          "train_seconds": round(base + r["time"] - eval_seconds, 1),
                          "NDCG@10": r["valid/NDCG@10"], "HR@10": r["valid/HR@10"], "train_loss": loss})
        last_time = r["time"]
    return curve


def run_config(name: str, args: argparse.Namespace, *, train_now: bool = True) -> dict[str, Any]:
    """Train configuration ``name`` (or, with ``train_now=False``, read what its run folder holds so
    far: a run stopped by hand), return its curve and best valid numbers."""
    train, valid, policy, config, cfg, objective = build_run(name, args.eval_requests, args.evals_per_epoch,
                                                             args.patience, args.seed, args.progress)
    steps_per_epoch = -(-objective.size // cfg["batch"])
    run = Path(args.runs) / name
    if train_now:
        summary = train_sft(policy, train, valid, config, run_dir=run)
    curve = curve_of(run, steps_per_epoch)
    if not train_now:  # the same numbers train_sft's summary gives, from the log
        best = max(curve, key=lambda c: (c["NDCG@10"], c["step"]))
        summary = {"steps": curve[-1]["step"], "best_valid": best["NDCG@10"], "best_step": best["step"],
                   "level": objective.level}
    train_seconds = curve[-1]["train_seconds"] if curve else None
    steps = summary["steps"]
    return {
        "settings": cfg, "model": SIZES[cfg["size"]], "level": summary["level"], "finished": train_now,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "batches_per_epoch": steps_per_epoch, "targets_per_epoch": train.num_requests,
        "steps": steps, "train_seconds": train_seconds,
        "targets_per_second": round(steps / steps_per_epoch * train.num_requests / train_seconds, 1)
        if train_seconds else None,
        "best_valid_NDCG@10": summary["best_valid"], "best_step": summary["best_step"], "curve": curve,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Valid NDCG@10 against training minutes, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in results["configs"].items():
        xs = [c["train_seconds"] / 60 for c in r["curve"]]
        threads = r.get("threads", 1)
        ax.plot(xs, [c["NDCG@10"] for c in r["curve"]], marker="o", ms=3,
                label=f"{name} ({threads} thread{'s' if threads > 1 else ''})")
    ax.axhline(0.0501, color="k", ls="--", lw=1, label="TIGER (published, test)")
    ax.set_xlabel("training minutes (validation excluded; 2-core CPU, threads in the legend)")
    ax.set_ylabel(f"valid NDCG@10 ({results['eval_requests']} requests, beam 20)")
    ax.set_title("From-scratch SFT on LC-Rec Games")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.png")  # two sweeps may draw at once: rename
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--eval-requests", type=int, default=2000)
    parser.add_argument("--evals-per-epoch", type=int, default=1)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/sft-sweep")
    parser.add_argument("--out", default="benchmarks/results/sft-sweep-games",
                        help="folder: one JSON per configuration, and the plot of all of them")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--collect", action="store_true",
                        help="record the configurations' runs as they stand (stopped by hand: "
                             "'finished': false) instead of training them")
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            print(f"{name}: done ({path})")
            continue
        start = time.time()
        result = run_config(name, args, train_now=not args.collect)
        machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
        result.update(wall_seconds=round(time.time() - start, 1), eval_requests=args.eval_requests,
                      valid_beam=20, threads=args.threads, patience=args.patience, machine=machine)
        print(name, json.dumps({k: v for k, v in result.items() if k != "curve"}))
        write_atomically(path, json.dumps(result, indent=2))
        results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
        plot({"configs": results, "eval_requests": args.eval_requests}, out / "curves.png")


if __name__ == "__main__":
    main()
