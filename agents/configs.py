"""The settings of SFT and RL training as plain dataclasses (no torch import: the CLI is built from them).

``recgym sft`` and ``recgym train`` generate their options from these classes
(:mod:`agents.cli_options`), so a default and its help text live here only.

Every field is checked when a config is made (``__post_init__``): a run with a NaN or negative
learning rate, a zero batch or a metric the validation beam cannot compute fails at once with a
:class:`ConfigError` naming the field, not after hours of training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from recgym.metrics import KS

# Qwen2-architecture model sizes for offline runs (vocabulary from the env's tokenizer).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    # mini: the Games SFT sweep's pick (benchmarks/results/sft-sweep-games/)
    "mini": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4},
}
SFT_LEVELS = ("auto", "request", "sequence")


class ConfigError(ValueError):
    """A setting out of range; ``field`` names it and ``reason`` says what is allowed.

    Example:
        >>> SFTConfig(lr=float("nan"))
        Traceback (most recent call last):
        ...
        agents.configs.ConfigError: lr=nan: must be a finite number > 0
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}={value!r}: {reason}")


def metric_choices(beam: int) -> list[str]:
    """The validation metrics a beam of width ``beam`` computes: HR@K and NDCG@K for K in KS up to it.

    Example:
        >>> metric_choices(5)
        ['HR@1', 'NDCG@1', 'HR@3', 'NDCG@3', 'HR@5', 'NDCG@5']
    """
    return [f"{name}@{k}" for k in KS if k <= beam for name in ("HR", "NDCG")]


def check_config(config: Any, *, minimum: dict[str, int], reals: dict[str, bool]) -> None:
    """Check a config's fields: ints (or None where the field allows it) at least ``minimum[name]``,
    reals finite and > 0 (``reals[name]`` True) or >= 0 (False), the metric against the beam,
    bools and strings by kind.

    Example:
        >>> check_config(RLConfig(), minimum={"steps": 1}, reals={"lr": True})
    """
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in minimum:
            if value is None and "None" in str(f.type):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{f.name} must be an int, got {value!r} ({type(value).__name__})")
            if value < minimum[f.name]:
                raise ConfigError(f.name, value, f"must be an int >= {minimum[f.name]}")
        elif f.name in reals:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{f.name} must be a number, got {value!r} ({type(value).__name__})")
            strict = reals[f.name]
            if not math.isfinite(value) or value < 0 or (strict and value == 0):
                raise ConfigError(f.name, value, f"must be a finite number {'>' if strict else '>='} 0")
        elif f.name == "progress" and not isinstance(value, bool):
            raise TypeError(f"progress must be a bool, got {value!r}")
    metric, beam = config.metric, config.beam
    match = re.fullmatch(r"(HR|NDCG)@(\d+)", str(metric))
    if match is None or int(match.group(2)) not in KS:
        raise ConfigError("metric", metric, f"choose one of {metric_choices(max(KS))}")
    if int(match.group(2)) > beam:
        raise ConfigError("metric", metric, f"not computed at beam={beam} (metrics at that beam: "
                          f"{metric_choices(beam)}); raise beam to at least {match.group(2)}")


@dataclass
class SFTConfig:
    """Settings of :func:`train_sft` (defaults suit the offline presets on CPU).

    Args:
        epochs: passes over the train split.
        batch_size: requests per optimizer step.
        lr: SFT's AdamW peak learning rate; the schedule is linear warm-up then cosine decay.
        weight_decay: SFT's AdamW decoupled weight decay (0: none).
        warmup_steps: warm-up length.
        grad_clip: max gradient norm.
        eval_every: steps between validations (0: once per epoch).
        eval_requests: validation requests per evaluation (None: the whole valid split, the
            default; a seeded sample when set, and a warning below 2,000).
        beam: beam width of validation (>= 10 for NDCG@10; 20 keeps validation cheap, the test
            protocol uses 50).
        metric: the validation metric that picks the best weights (NDCG@10; ties go to the later).
        patience: evaluations without improvement before stopping (0: never stop early).
        max_steps: stop after this many steps (None: all epochs).
        seed: shuffling and initialisation seed.
        progress: show progress bars.
        fsdp: under torchrun, shard the decoder blocks' weights, gradients and AdamW states over the
            processes (FSDP2, agents.parallel.fsdp; embeddings and output layer stay replicated); no effect in
            one process; not with adapters.
        dropout: SFT-time dropout on the embeddings and both residual branches of every decoder
            block (agents.training.loop.hidden_dropout; SASRec and TIGER use 0.1-0.5); 0: none. Never
            applied in RL, rollouts or evaluation.
        level: what a batch holds: request (rows of the split, one prompt-plus-target forward each),
            sequence (windows of users' item sequences, one forward teaching every item in it; needs
            the compact template) or auto (sequence where the template is compact and the rows are
            user sequences, else request); batch_size counts rows or windows.
        unlikelihood: alpha of the unlikelihood term (agents.training.sft): each target also pushes
            down the items its history already holds, -log(1 - pi(c)) per distinct history item c;
            0: plain NLL. Needs sequence-level SFT on one token per item (sid_index="atomic").
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 0
    eval_requests: int | None = None
    beam: int = 20
    metric: str = "NDCG@10"
    patience: int = 2
    max_steps: int | None = None
    seed: int = 0
    progress: bool = True
    fsdp: bool = False
    dropout: float = 0.0
    level: str = "auto"
    unlikelihood: float = 0.0

    def __post_init__(self) -> None:
        if self.level not in SFT_LEVELS:
            raise ConfigError("level", self.level, f"choose one of {SFT_LEVELS}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", self.dropout, "must be a number in [0, 1)")
        check_config(self, minimum={"epochs": 1, "batch_size": 1, "warmup_steps": 0, "eval_every": 0,
                                    "eval_requests": 1, "beam": 1, "patience": 0, "max_steps": 1, "seed": 0},
                     reals={"lr": True, "weight_decay": False, "grad_clip": True, "unlikelihood": False})


@dataclass
class RLConfig:
    """Settings of :func:`train_rl` shared by every learner (defaults suit the offline presets on CPU).

    Args:
        steps: batches of rollouts (one per step).
        requests_per_step: distinct requests per batch (each gets the learner's group of rollouts).
        lr: RL's AdamW peak learning rate; linear warm-up over ``warmup_steps``, then cosine decay to
            0.1 x.
        weight_decay: RL's AdamW decoupled weight decay (0: none).
        warmup_steps: steps of the linear warm-up of the learning rate.
        grad_clip: max gradient norm.
        mu: optimizer passes over each batch of rollouts.
        minibatches: optimizer steps per pass (the batch's groups split evenly); with mu * minibatches
            > 1 the behaviour policy's log-probs are stored, pi moves away from pi_old within the
            batch, and the clip and KL-Cov act (4 by default, so that they do).
        eval_every: steps between validations (0: only at the start and the end).
        eval_requests: validation requests per evaluation (None: the whole valid split; a seeded
            sample when set).
        beam: beam width of RL's validation (>= 10 for NDCG@10; the test protocol uses 50).
        metric: the validation metric that picks the best RL weights (NDCG@10; ties go to the
            later).
        patience: RL evaluations without improvement before stopping (0: never stop early).
        seed: request order, rollouts and initialisation.
        progress: progress bars.
        env_id: the registered env whose ``vector_entry_point`` builds the rollout envs.
        fsdp: under torchrun, shard the decoder blocks' weights, gradients and AdamW states over the
            processes (FSDP2, agents.parallel.fsdp; embeddings and output layer stay replicated); no effect in
            one process; not with adapters.
    """

    steps: int = 60
    requests_per_step: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    grad_clip: float = 1.0
    mu: int = 1
    minibatches: int = 4
    eval_every: int = 20
    eval_requests: int | None = None
    beam: int = 20
    metric: str = "NDCG@10"
    patience: int = 3
    seed: int = 0
    progress: bool = True
    env_id: str = "RecGen-v0"
    fsdp: bool = False

    def __post_init__(self) -> None:
        check_config(self, minimum={"steps": 1, "requests_per_step": 1, "warmup_steps": 0, "mu": 1,
                                    "minibatches": 1, "eval_every": 0, "eval_requests": 1, "beam": 1,
                                    "patience": 0, "seed": 0},
                     reals={"lr": True, "weight_decay": False, "grad_clip": True})
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ConfigError("env_id", self.env_id, "must be a registered env id")


# -- adapters (agents.model.adapters applies them) ------------------------------------------------------

LORA_TARGETS = "all-linear"
EMBEDDINGS = ("none", "new", "all")


@dataclass
class AdapterConfig:
    """Which part of the policy trains: LoRA adapters, a frozen trunk, new-token rows (all off by default).

    Args:
        lora_r: LoRA rank r (0: no LoRA).
        lora_alpha: LoRA scale numerator: the update is (alpha / r) B A.
        lora_dropout: dropout on the LoRA branch's input while training (0 keeps rollouts and the
            update on one distribution).
        lora_targets: comma-separated names of the Linear layers that get LoRA (e.g.
            q_proj,v_proj), or all-linear (every Linear of the decoder; never the output layer).
        freeze: train part of the model only: top:K (the top K decoder blocks and the final norm;
            with LoRA, the adapters of those blocks; the blocks below run without autograd) or
            embeddings (only the token rows of train_embeddings; MiniOneRec's --freeze_LLM).
        train_embeddings: token rows that also train under LoRA or freeze: new (rows beyond the
            pretrained vocabulary, e.g. SID tokens), all (the whole embedding and output layer) or
            none.

    Example:
        >>> AdapterConfig(lora_r=8).enabled, AdapterConfig().enabled
        (True, False)
        >>> AdapterConfig(freeze="top:0")
        Traceback (most recent call last):
        ...
        agents.configs.ConfigError: freeze='top:0': use 'top:K' with K >= 1 decoder blocks, or 'embeddings'
    """

    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = LORA_TARGETS
    freeze: str | None = None
    train_embeddings: str = "new"

    def __post_init__(self) -> None:
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ConfigError("lora_r", self.lora_r, "must be an int >= 0 (0: no LoRA)")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) \
                or not self.lora_alpha > 0 or self.lora_alpha == float("inf"):
            raise ConfigError("lora_alpha", self.lora_alpha, "must be a finite number > 0")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", self.lora_dropout, "must be a number in [0, 1)")
        lora_targets(self.lora_targets)
        if self.freeze == "":
            self.freeze = None
        kind, _ = parse_freeze(self.freeze) if self.freeze is not None else (None, None)
        check_embeddings(self.train_embeddings)
        if kind == "embeddings" and self.lora_r:
            raise ConfigError("freeze", self.freeze, "'embeddings' trains token rows only, LoRA trains the "
                              "blocks: use one of them (LoRA on the top blocks only: lora_r with "
                              "freeze='top:K')")
        if kind == "embeddings" and self.train_embeddings == "none":
            raise ConfigError("train_embeddings", "none", "freeze='embeddings' needs token rows to train: "
                              "'new' or 'all'")

    @property
    def enabled(self) -> bool:
        """Whether the config changes anything (LoRA or a frozen part)."""
        return bool(self.lora_r) or self.freeze is not None


def parse_freeze(trainable: str) -> tuple[str, int | None]:
    """``"top:K"`` -> ``("top", K)``, ``"embeddings"`` -> ``("embeddings", None)``; anything else fails.

    Example:
        >>> parse_freeze("top:2"), parse_freeze("embeddings")
        (('top', 2), ('embeddings', None))
    """
    if trainable == "embeddings":
        return "embeddings", None
    match = re.fullmatch(r"top:(\d+)", str(trainable))
    if match is None or int(match.group(1)) < 1:
        raise ConfigError("freeze", trainable, "use 'top:K' with K >= 1 decoder blocks, or 'embeddings'")
    return "top", int(match.group(1))


def check_embeddings(embeddings: str) -> str:
    """``embeddings`` if it is one of :data:`EMBEDDINGS`, else a :class:`ConfigError` naming them.

    Example:
        >>> check_embeddings("new")
        'new'
    """
    if embeddings not in EMBEDDINGS:
        raise ConfigError("train_embeddings", embeddings, f"choose one of {EMBEDDINGS}")
    return embeddings


def lora_targets(targets: str | list[str] | tuple[str, ...]) -> list[str] | str:
    """``"all-linear"`` or a list of Linear layer names from a comma-separated string or a list.

    Example:
        >>> lora_targets("q_proj, v_proj")
        ['q_proj', 'v_proj']
    """
    if targets == LORA_TARGETS:
        return LORA_TARGETS
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t) for t in targets]
    if not names or any(not re.fullmatch(r"[A-Za-z_][\w.]*", n) for n in names):
        raise ConfigError("lora_targets", targets, "give Linear layer names separated by commas (e.g. "
                          f"q_proj,v_proj) or {LORA_TARGETS!r}")
    return names


__all__ = [
    "EMBEDDINGS", "LORA_TARGETS", "MODEL_PRESETS", "AdapterConfig", "ConfigError", "RLConfig", "SFTConfig",
    "check_config", "check_embeddings", "lora_targets", "metric_choices", "parse_freeze",
]
