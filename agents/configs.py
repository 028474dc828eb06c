"""The settings of SFT and RL training as plain dataclasses (no torch import: the CLI is built from them).

``recgym sft`` and ``recgym train`` generate their options from these classes
(:mod:`agents.cli_options`), so a default and its help text live here only.
"""

from __future__ import annotations

from dataclasses import dataclass

# Qwen2-architecture model sizes for offline runs (vocabulary from the env's tokenizer).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4},
}


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
        eval_requests: validation requests per evaluation (seeded sample; None: all).
        beam: beam width of validation (>= 10, HR@10 is the early-stopping metric).
        metric: the validation metric to maximise.
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
    eval_requests: int | None = 256
    beam: int = 20
    metric: str = "HR@10"
    patience: int = 2
    max_steps: int | None = None
    seed: int = 0
    progress: bool = True


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
            > 1 the behaviour policy's log-probs are stored and the clip (and KL-Cov) act.
        eval_every: steps between validations (0: only at the start and the end).
        eval_requests, beam, metric, patience: validation sample, beam width, the metric that picks
            the best weights, evaluations without improvement before stopping (0: never).
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
    minibatches: int = 2
    eval_every: int = 20
    eval_requests: int | None = 256
    beam: int = 20
    metric: str = "HR@10"
    patience: int = 0
    seed: int = 0
    progress: bool = True
    env_id: str = "RecGen-v0"


__all__ = ["MODEL_PRESETS", "RLConfig", "SFTConfig"]
