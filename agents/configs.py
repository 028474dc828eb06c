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
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4},
}


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
        lr, weight_decay: AdamW settings; the schedule is linear warm-up then cosine decay.
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

    def __post_init__(self) -> None:
        check_config(self, minimum={"epochs": 1, "batch_size": 1, "warmup_steps": 0, "eval_every": 0,
                                    "eval_requests": 1, "beam": 1, "patience": 0, "max_steps": 1, "seed": 0},
                     reals={"lr": True, "weight_decay": False, "grad_clip": True})


@dataclass
class RLConfig:
    """Settings of :func:`train_rl` shared by every learner (defaults suit the offline presets on CPU).

    Args:
        steps: batches of rollouts (one per step).
        requests_per_step: distinct requests per batch (each gets the learner's group of rollouts).
        lr, weight_decay: AdamW; linear warm-up over ``warmup_steps``, then cosine decay to 0.1 x.
        grad_clip: max gradient norm.
        mu: optimizer passes over each batch of rollouts.
        minibatches: optimizer steps per pass (the batch's groups split evenly); with mu * minibatches
            > 1 the behaviour policy's log-probs are stored, pi moves away from pi_old within the
            batch, and the clip and KL-Cov act (4 by default, so that they do).
        eval_every: steps between validations (0: only at the start and the end).
        eval_requests, beam, metric, patience: validation sample (None: the whole valid split),
            beam width, the metric that picks the best weights (NDCG@10; ties go to the later),
            evaluations without improvement before stopping (0: never).
        seed: request order, rollouts and initialisation.
        progress: progress bars.
        env_id: the registered env whose ``vector_entry_point`` builds the rollout envs.
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

    def __post_init__(self) -> None:
        check_config(self, minimum={"steps": 1, "requests_per_step": 1, "warmup_steps": 0, "mu": 1,
                                    "minibatches": 1, "eval_every": 0, "eval_requests": 1, "beam": 1,
                                    "patience": 0, "seed": 0},
                     reals={"lr": True, "weight_decay": False, "grad_clip": True})
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ConfigError("env_id", self.env_id, "must be a registered env id")


__all__ = ["MODEL_PRESETS", "ConfigError", "RLConfig", "SFTConfig", "check_config", "metric_choices"]
