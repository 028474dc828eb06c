"""The ``recgym`` console command.

* ``recgym data list | describe NAME | download NAME``: datasets.
* ``recgym sft --env RecGen-Synthetic-v0 --out runs/sft``: fine-tune an LLM policy, evaluate on test.
* ``recgym train --env RecGen-Synthetic-v0 --agent riser --out runs/riser``: SFT (or ``--sft DIR``),
  then RL with GRPO / SimPO / RISER, test before and after, results.json and curves.png.
* ``recgym eval --env ... (--policy DIR | --agent popularity|transition|sasrec)``: HR/NDCG@K.
* ``recgym select --env ... --policy DIR --method minirec --size 0.1 --out sel.json``: pick a subset of
  training requests (MiniRec, learnability, K-center or random); ``recgym train --subset sel.json``
  trains on it (in its curriculum order for MiniRec).
* ``recgym bench --preset ci --agents popularity,sasrec,sft,grpo,riser,maskable_ppo --seeds 0,1 --out DIR``:
  every agent on one env from one SFT start with one rollout budget; results.json/.md, metrics.png,
  curves.png (see :mod:`agents.bench`).

Heavy imports (torch, transformers) happen inside commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from agents.cli_options import add_config_arguments, config_from_args


def parse_key_values(values: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are JSON when they parse as JSON, else strings.

    >>> parse_key_values(["max_history=5", "dataset=games", 'dataset_kwargs={"num_items": 30}'])
    {'max_history': 5, 'dataset': 'games', 'dataset_kwargs': {'num_items': 30}}
    """
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"recgym: --set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _print_describe(summary: dict[str, Any]) -> None:
    print(f"dataset {summary['name']}: {summary['items']} items, users {summary['users']}, "
          f"distinct titles {summary['titles']}, distinct SIDs {summary['sids']} "
          f"({summary['sid_levels']} levels), max history {summary['max_history']}")
    print(f"{'split':<6} {'examples':>9} {'users':>7} {'targets':>8} {'hist mean':>9} {'min':>4} {'max':>4}")
    for split, s in summary["splits"].items():
        def cell(v: Any) -> str:
            return "-" if v is None else str(v)

        print(f"{split:<6} {s['examples']:>9} {cell(s['users']):>7} {s['distinct_targets']:>8} "
              f"{cell(s['history_len_mean']):>9} {cell(s['history_len_min']):>4} "
              f"{cell(s['history_len_max']):>4}")
    p = summary["target_popularity"]
    print(f"target popularity: top 1% of items get {100 * p['top_1pct_share']:.1f}% of targets; "
          f"max {p['max_count']}, median {p['median_count']}, never a target {p['items_never_a_target']}")


def cmd_data(args: argparse.Namespace) -> int:
    from recgym.data import registry

    if args.data_command == "list":
        for name, text in registry.available().items():
            print(f"{name:<16} {text}")
        return 0
    kwargs = parse_key_values(args.set)
    download = args.data_command == "download"
    dataset = registry.load(args.name, format=args.format, max_history=args.max_history,
                            download=download, **kwargs)
    summary = dataset.describe()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_describe(summary)
    return 0


def _task_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = parse_key_values(args.set)
    if args.dataset:
        out["dataset"] = args.dataset
    if args.representation:
        out["representation"] = args.representation
    if args.dataset_set:
        out["dataset_kwargs"] = parse_key_values(args.dataset_set)
    return out


def cmd_sft(args: argparse.Namespace) -> int:
    import torch

    from agents.build import build_policy, make_task, write_json
    from agents.evaluate import evaluate
    from agents.sft import SFTConfig, train_sft
    from recgym.metrics import format_table

    torch.manual_seed(args.seed)
    config = config_from_args(SFTConfig, args, exclude=SFT_SHARED, seed=args.seed)
    overrides = _task_overrides(args)
    train = make_task(args.env, args.train_split, overrides, tokenizer=args.model)
    valid = make_task(args.env, "valid", overrides, tokenizer=train.items)
    test = make_task(args.env, "test", overrides, tokenizer=train.items)
    policy = build_policy(train.items, model=args.model, preset=args.preset, seed=args.seed,
                          device=args.device)
    summary = train_sft(policy, train, valid if valid.num_requests else None, config, run_dir=args.out)
    metrics = evaluate(policy, test, beam=args.beam, max_requests=args.test_requests, seed=args.seed)
    results = {"env": args.env, "task": overrides, "representation": train.representation,
               "model": args.model or args.preset, "sft": summary, "test": metrics}
    print(format_table({f"sft ({args.model or args.preset})": metrics}))
    write_json(f"{args.out}/results.json", results)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from agents.build import build_policy, load_subset, make_task, write_json
    from agents.evaluate import evaluate
    from agents.learners import make_learner
    from agents.plots import plot_training_curves
    from agents.policy import LLMPolicy
    from agents.rl import EpochSampler, RLConfig, train_rl
    from agents.sft import SFTConfig, train_sft
    from agents.tracking import MetricLogger
    from recgym.metrics import format_table

    torch.manual_seed(args.seed)
    learner_settings = parse_key_values(args.learner_set)
    for key in ("group_size", "oversample"):
        if getattr(args, key) is not None:
            learner_settings[key] = getattr(args, key)
    learner = make_learner(args.agent, **learner_settings)  # bad settings fail before any training
    rl_config = config_from_args(RLConfig, args, exclude=RL_EXCLUDE, seed=args.seed, env_id=args.env)
    sft_config = config_from_args(SFTConfig, args, prefix="sft", exclude=SFT_SHARED, seed=args.seed,
                                  eval_requests=args.eval_requests, beam=args.beam)
    if not sft_config.max_steps:  # --sft-steps 0: every epoch
        sft_config.max_steps = None
    overrides = _task_overrides(args)
    # A saved SFT policy brings its own item tokenization (representation, tokenizer, catalogue).
    policy = LLMPolicy.from_pretrained(args.sft, device=args.device) if args.sft else None
    train = make_task(args.env, args.train_split, overrides,
                      tokenizer=policy.items if policy is not None else args.model)
    valid = make_task(args.env, "valid", overrides, tokenizer=train.items)
    test = make_task(args.env, "test", overrides, tokenizer=train.items)
    valid_or_none = valid if valid.num_requests else None
    results: dict[str, Any] = {"env": args.env, "task": overrides, "representation": train.representation,
                               "agent": learner.describe()}
    if policy is not None:
        results["sft"] = {"loaded": args.sft}
    else:
        policy = build_policy(train.items, model=args.model, preset=args.preset, seed=args.seed,
                              device=args.device)
        results["sft"] = train_sft(policy, train, valid_or_none, sft_config, run_dir=f"{args.out}/sft")
    results["model"] = args.sft or args.model or args.preset
    table = {"sft": evaluate(policy, test, beam=args.beam, max_requests=args.test_requests, seed=args.seed)}
    sampler = None
    if args.subset:
        from agents.minirec import CurriculumSampler

        order, ordered = load_subset(args.subset, train.num_requests)
        sampler = (CurriculumSampler(order, args.requests_per_step) if ordered
                   else EpochSampler(order, args.requests_per_step, seed=args.seed))
        results["subset"] = {"file": args.subset, "requests": len(order), "curriculum": ordered}
    results["rl"] = train_rl(policy, learner, train, valid_or_none, rl_config, run_dir=f"{args.out}/rl",
                             sampler=sampler)
    table[f"sft -> {args.agent}"] = evaluate(policy, test, beam=args.beam, max_requests=args.test_requests,
                                             seed=args.seed)
    results["test"] = table
    print(format_table(table))
    curves = plot_training_curves({args.agent: MetricLogger.read(f"{args.out}/rl")}, f"{args.out}/curves.png")
    print(f"wrote {curves}")
    write_json(f"{args.out}/results.json", results)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    import torch

    from agents.build import make_task, write_json
    from agents.evaluate import select_rows
    from agents.minirec import run_selection
    from agents.policy import LLMPolicy

    torch.manual_seed(args.seed)
    size = float(args.size) if "." in args.size else int(args.size)
    if size <= 0:
        raise ValueError(f"--size must be a count or a fraction in (0, 1), got {args.size!r}")
    policy = LLMPolicy.from_pretrained(args.policy, device=args.device) if args.policy else None
    if policy is None and args.method != "random":
        raise ValueError(f"--method {args.method} needs a proxy policy: pass --policy DIR "
                         "(e.g. an SFT run's best/)")
    task = make_task(args.env, args.train_split, _task_overrides(args),
                     tokenizer=policy.items if policy is not None else None)
    pool = select_rows(task.num_requests, args.pool, seed=args.seed)
    selection = run_selection(policy, task, pool, args.method, size, rollouts=args.rollouts,
                              variant=args.variant, alpha=args.alpha, mu=args.mu, sigma=args.sigma,
                              group=args.group, use_curriculum=args.curriculum, seed=args.seed)
    selection.update(env=args.env, split=args.train_split, policy=args.policy)
    stats = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in selection["stats"].items())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in selection["seconds"].items())
    print(f"{args.method}: {selection['selected']} of {len(pool)} requests "
          f"({'curriculum order' if selection['curriculum'] else 'pick order'}); {stats}")
    print(f"time: {timing}")
    write_json(args.out, selection)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from agents.build import dataset_name, make_task, write_json
    from recgym.metrics import format_table

    overrides = _task_overrides(args)
    if args.policy:
        from agents.evaluate import evaluate
        from agents.policy import LLMPolicy

        policy = LLMPolicy.from_pretrained(args.policy, device=args.device)
        task = make_task(args.env, args.split, overrides, tokenizer=policy.items)
        name = f"policy {args.policy}"
        metrics = evaluate(policy, task, beam=args.beam, max_requests=args.max_requests, seed=args.seed)
    else:
        from agents.baselines import make_ranker
        from agents.evaluate import evaluate_ranker
        from recgym.data import load

        dataset = load(dataset_name(args.env, overrides), **overrides.get("dataset_kwargs", {}))
        model = make_ranker(args.agent, seed=args.seed)
        model.fit(dataset.train, dataset.catalogue.num_items, valid=dataset.valid)  # valid: early stopping
        name = args.agent
        metrics = evaluate_ranker(model, dataset.split(args.split), max_requests=args.max_requests,
                                  seed=args.seed)
    print(format_table({name: metrics}))
    write_json(args.out, {"env": args.env, "split": args.split, "agent": name, "metrics": metrics})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agents import bench
    from agents.cli_options import config_values

    knobs = config_values(bench.BenchPreset, args, only=BENCH_KNOBS, skip_none=True)
    overrides = {**parse_key_values(args.preset_set), **knobs}
    if args.env:
        overrides["env"] = args.env
    preset = bench.get_preset(args.preset, **overrides)
    learner_settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_key_values(args.learner_set).items():
        agent, dot, setting = key.rpartition(".")
        if not dot or not agent:
            raise SystemExit(f"recgym: --learner-set expects AGENT.KEY=VALUE, got {key!r}")
        learner_settings.setdefault(agent, {})[setting] = value
    agents = bench.parse_agents(args.agents, preset, learner_settings)
    seeds = bench.parse_seeds(args.seeds)
    bench.run_bench(preset, agents, seeds, args.out, task_overrides=_task_overrides(args), sft=args.sft,
                    device=args.device, progress=not args.quiet)
    return 0


def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="RecGen-Synthetic-v0", help="a registered RecGen env id")
    p.add_argument("--dataset", help="override the env's dataset (a name or a folder)")
    p.add_argument("--representation", choices=["title", "sid"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RecGenTask option, e.g. --set vocab_size=2048 (repeatable)")
    p.add_argument("--dataset-set", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset loader option, e.g. --dataset-set num_items=500 (repeatable)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)


# Options shared by several commands (task, seed, beam) are not repeated per config.
SFT_SHARED = ("seed", "progress")
RL_EXCLUDE = ("seed", "progress", "env_id")
TRAIN_SFT = ("epochs", "batch_size", "lr", "max_steps", "weight_decay", "warmup_steps", "eval_every")
TRAIN_SFT_DEFAULTS = {"max_steps": 300, "patience": 0}  # `train` runs a short SFT before RL
BENCH_KNOBS = ("sft_steps", "rl_steps", "requests_per_step", "rollouts_per_request", "test_requests",
               "eval_requests", "sasrec_epochs", "model")


def build_parser() -> argparse.ArgumentParser:
    from agents.baselines import ranker_names
    from agents.bench import PRESETS, BenchPreset
    from agents.configs import MODEL_PRESETS, RLConfig, SFTConfig
    from agents.learners import learner_names
    from recgym.data.readers import FORMATS

    parser = argparse.ArgumentParser(prog="recgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="list, download/prepare and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="dataset names and where they come from")
    for name, text in (("describe", "load a dataset (from cache when present) and summarise it"),
                       ("download", "download raw files if needed, prepare, cache and summarise")):
        p = data_sub.add_parser(name, help=text)
        p.add_argument("name", help="a dataset name (see `recgym data list`) or a folder path")
        p.add_argument("--format", choices=sorted(FORMATS), help="folder format (default: detect)")
        p.add_argument("--max-history", type=int, default=10)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="extra loader option, e.g. --set num_items=500 (repeatable)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
    data.set_defaults(func=cmd_data)

    def model_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS), help="offline model size")
        p.add_argument("--model", help="a local folder or hub name of a causal LM (instead of --preset)")
        p.add_argument("--train-split", default="train", choices=["train", "valid"],
                       help="which split trains (D3 folders publish only valid and test)")

    sft = sub.add_parser("sft", help="fine-tune an LLM policy on next-item prediction, then test it")
    _add_task_arguments(sft)
    model_arguments(sft)
    add_config_arguments(sft.add_argument_group("SFT (agents.sft.SFTConfig)"), SFTConfig, exclude=SFT_SHARED)
    sft.add_argument("--test-requests", type=int, default=None, help="test on a seeded sample")
    sft.add_argument("--out", default="runs/sft", help="run folder (logs, checkpoints, results.json)")
    sft.set_defaults(func=cmd_sft)

    tr = sub.add_parser("train", help="SFT (or load an SFT policy), then RL (GRPO/SimPO/RISER), then test")
    _add_task_arguments(tr)
    tr.add_argument("--agent", default="riser", choices=learner_names(),
                    help="the RL learner (plug-ins registered with --plugin join the choices)")
    tr.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                    help="a .py file or module that registers learners when imported (repeatable)")
    tr.add_argument("--sft", help="a policy folder to start RL from (skips SFT), e.g. runs/x/sft/best")
    model_arguments(tr)
    add_config_arguments(tr.add_argument_group("SFT stage (agents.sft.SFTConfig)"), SFTConfig, prefix="sft",
                         only=TRAIN_SFT, renames={"max_steps": "steps"}, defaults=TRAIN_SFT_DEFAULTS)
    add_config_arguments(tr.add_argument_group("RL (agents.rl.RLConfig)"), RLConfig, exclude=RL_EXCLUDE)
    tr.add_argument("--group-size", type=int, help="n, rollouts per request in a group")
    tr.add_argument("--oversample", type=int, help="RISER's m, rollouts before de-duplication")
    tr.add_argument("--learner-set", action="append", default=[], metavar="KEY=VALUE",
                    help="learner setting, e.g. --learner-set simpo_weight=0.5 (repeatable)")
    tr.add_argument("--test-requests", type=int, default=None, help="test on a seeded sample")
    tr.add_argument("--subset", help="train RL on the requests of a `recgym select` file (in its order)")
    tr.add_argument("--out", default="runs/train", help="run folder (sft/, rl/, results.json, curves.png)")
    tr.set_defaults(func=cmd_train)

    se = sub.add_parser("select", help="choose a subset of training requests for RL (MiniRec and baselines)")
    _add_task_arguments(se)
    se.add_argument("--policy", help="the proxy policy folder (e.g. an SFT run's best/); random needs none")
    se.add_argument("--method", default="minirec", choices=["minirec", "learnability", "kcenter", "random"])
    se.add_argument("--size", default="0.1", help="a count (e.g. 256) or a fraction of the pool (e.g. 0.1)")
    se.add_argument("--pool", type=int, help="select from a seeded sample of this many requests")
    se.add_argument("--train-split", default="train", choices=["train", "valid"])
    se.add_argument("--rollouts", type=int, default=4, help="N, proxy rollouts per request (for r_bar)")
    se.add_argument("--variant", default="hidden", choices=["hidden", "params"],
                    help="representativeness: HVP w.r.t. the final hidden state, or projected gradients")
    se.add_argument("--alpha", type=float, default=1.0, help="weight of learnability against R")
    se.add_argument("--mu", type=float, default=0.5, help="the r_bar of highest learnability")
    se.add_argument("--sigma", type=float, help="learnability width (default: std of r_bar over the pool)")
    se.add_argument("--group", type=int, default=64, help="curriculum group size")
    se.add_argument("--curriculum", action=argparse.BooleanOptionalAction, default=None,
                    help="order groups easy -> hard (default: on for minirec)")
    se.add_argument("--out", default="runs/selection.json", help="the selection file (JSON)")
    se.set_defaults(func=cmd_select)

    ev = sub.add_parser("eval", help="HR/NDCG@{1,3,5,10,20} of a saved policy or a classic recommender")
    _add_task_arguments(ev)
    who = ev.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", help="a folder written by LLMPolicy.save_pretrained (e.g. runs/sft/best)")
    who.add_argument("--agent", choices=ranker_names())
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ev.add_argument("--beam", type=int, default=20)
    ev.add_argument("--max-requests", type=int, default=None)
    ev.add_argument("--out", help="write the metrics to this JSON file")
    ev.set_defaults(func=cmd_eval)

    be = sub.add_parser("bench", help="benchmark agents on one env: same SFT start, rollout budget and test")
    be.add_argument("--preset", default="ci", choices=list(PRESETS),
                    help="scale: ci (synthetic, minutes), cpu (real Games, < 1 h on 2 cores), paper (GPU)")
    be.add_argument("--agents", default="popularity,transition,sasrec,sft,simpo,grpo,riser,maskable_ppo",
                    help="comma list; 'ablation' expands into RISER's ablation variants; plug-ins add more")
    be.add_argument("--seeds", default="0", help="comma list of training seeds, e.g. 0,1")
    be.add_argument("--out", default="runs/bench", help="output folder (results.json/.md, metrics.png, ...)")
    be.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                    help="a .py file or module that registers learners when imported (repeatable)")
    be.add_argument("--sft", help="start RL from this saved policy folder instead of training SFT")
    be.add_argument("--env", help="a registered RecGen env id (default: the preset's)")
    be.add_argument("--dataset", help="override the env's dataset (a name or a folder)")
    be.add_argument("--representation", choices=["title", "sid"])
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra RecGenTask option")
    be.add_argument("--dataset-set", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset loader option, e.g. --dataset-set num_items=500 (repeatable)")
    be.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_config_arguments(be.add_argument_group("preset fields (default: the preset's)"), BenchPreset,
                         only=BENCH_KNOBS, renames={"rollouts_per_request": "rollouts"}, unset=True)
    be.add_argument("--preset-set", action="append", default=[], metavar="KEY=VALUE",
                    help="any preset field, e.g. --preset-set rl_lr=5e-4 (repeatable)")
    be.add_argument("--learner-set", action="append", default=[], metavar="AGENT.KEY=VALUE",
                    help="a learner setting of one agent, e.g. riser.simpo_weight=0.5 (repeatable)")
    be.add_argument("--quiet", action="store_true", help="no progress bars")
    be.set_defaults(func=cmd_bench)
    return parser


def _load_plugins(argv: Sequence[str]) -> None:
    """Import ``--plugin`` files before the parser is built, so their learners are valid choices."""
    from agents.plugins import load_plugin

    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--plugin" and i + 1 < len(args):
            load_plugin(args[i + 1])
        elif arg.startswith("--plugin="):
            load_plugin(arg.split("=", 1)[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recgym`` command.

    Example:
        >>> main(["data", "describe", "synthetic", "--set", "num_items=300", "--set", "num_users=100",
        ...       "--json"])  # doctest: +ELLIPSIS
        {...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_plugins(argv)
    except ValueError as err:
        print(f"recgym: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"recgym: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
