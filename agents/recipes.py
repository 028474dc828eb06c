"""Published RL recipes as named configurations: ReRe's and MiniOneRec's, setting by setting.

A recipe is a learner, its settings and the :class:`~agents.configs.RLConfig` settings a paper's
training script uses. ``recgym train --recipe rere`` and ``recgym bench --agents rere`` run one;
an explicit ``--lr`` (or any RL flag) still wins over the recipe's value. In ``recgym bench`` the
preset's budget (steps x requests per step x group) is every row's, so a recipe keeps its
optimizer settings but not its batch size there.

**ReRe** (``sober-clever/ReRe``: ``rere.sh`` launching ``rere.py`` with ``rere_trainer.py``, a
fork of TRL's ``GRPOTrainer``):

* groups: ``--beam_search True --num_generations 16``: the 16 beams of one constrained beam search
  (``ConstrainedLogitsProcessor`` on the log-softmax, no renormalisation) -> ``rollout="beam"``,
  ``group_size=16``;
* reward: ``--reward_type ranking`` = ``rule_reward`` + ``ndcg_rule_reward`` -> the env's
  ``reward="ranking"`` (:mod:`recgym.rewards`);
* advantages: (r - mean) / (std + 1e-4) over the group (``std`` unbiased) -> GRPO's defaults;
* loss: ``exp(log pi - log pi.detach()) * A - beta * KL_k3``, per-sequence token mean, then the
  mean over sequences (``compute_loss``, neither ``dapo`` nor ``gspo``) -> ``loss_type="grpo"``;
  ``--beta 1e-3``; one update per batch of rollouts, so rho = 1 and no clip acts -> ``mu=1``,
  ``minibatches=1``;
* optimizer: ``--learning_rate 1e-5``, ``max_grad_norm=0.3``, ``warmup_ratio=0.03``, cosine
  decay, AdamW (``paged_adamw_32bit``), no weight decay -> ``lr=1e-5``, ``grad_clip=0.3``,
  warm-up over 3% of the steps, ``weight_decay=0``;
* batch: ``--train_batch_size 64`` completions per device x 4 processes x
  ``--gradient_accumulation_steps 2`` / 16 per group = 32 requests per optimizer step ->
  ``requests_per_step=32``.

Where we differ: our cosine decays to 0.1 x the peak, TRL's to 0; ``--sync_ref_model True``
(TRL mixes the reference toward the policy every ``ref_model_sync_steps``) is not modelled, as our
reference stays the SFT start; ``temperature 1.0`` does not change a beam search.

**MiniOneRec** (``AkaliKong/MiniOneRec``: ``rl.sh`` -> ``rl.py`` with ``minionerec_trainer.py``):
the same trainer code, reward (``ndcg_rule_reward``), beta, learning rate, clip, warm-up and
schedule as ReRe, on semantic IDs; ``rl.sh`` launches 8 processes instead of 4, so a step holds
64 requests. That batch size is the only difference.

Example:
    >>> get_recipe("rere").learner_settings()["rollout"]
    'beam'
    >>> get_recipe("minionerec").rl["requests_per_step"]
    64
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """A learner, its settings and RL settings, as a paper's script sets them (module docstring).

    Args:
        name: the recipe's name (``rere``, ``minionerec``).
        learner: the registered learner it trains with.
        settings: the learner's settings.
        rl: :class:`~agents.configs.RLConfig` settings.
        warmup_ratio: warm-up as a share of the steps (HF's ``warmup_ratio``: ceil(ratio x steps)).
        source: where the settings come from.

    Example:
        >>> from agents.configs import RLConfig
        >>> get_recipe("rere").rl_config(RLConfig(steps=100)).warmup_steps   # ceil(0.03 x 100)
        3
    """

    name: str
    learner: str
    settings: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    warmup_ratio: float | None = None
    source: str = ""

    def learner_settings(self, **overrides: Any) -> dict[str, Any]:
        """The learner's settings, with ``overrides`` on top."""
        return {**self.settings, **overrides}

    def rl_config(self, base: Any, keep: tuple[str, ...] = ()) -> Any:
        """``base`` (an RLConfig) with the recipe's RL settings, except the fields named in ``keep``
        (e.g. the ones a user set explicitly, or a benchmark's budget); the warm-up follows the steps.
        """
        changes = {k: v for k, v in self.rl.items() if k not in keep}
        if self.warmup_ratio is not None and "warmup_steps" not in keep:
            changes["warmup_steps"] = math.ceil(self.warmup_ratio * base.steps)
        return replace(base, **changes)


_RERE_SETTINGS = {"group_size": 16, "rollout": "beam", "reward": "ranking", "beta": 1e-3,
                  "loss_type": "grpo", "scale_rewards": True, "eps": 1e-4, "temperature": 1.0}
_RERE_RL = {"lr": 1e-5, "grad_clip": 0.3, "weight_decay": 0.0, "mu": 1, "minibatches": 1,
            "requests_per_step": 32}

RECIPES: dict[str, Recipe] = {
    "rere": Recipe("rere", "grpo", _RERE_SETTINGS, _RERE_RL, warmup_ratio=0.03,
                   source="sober-clever/ReRe rere.sh, rere.py, rere_trainer.py"),
    "minionerec": Recipe("minionerec", "grpo", _RERE_SETTINGS, {**_RERE_RL, "requests_per_step": 64},
                         warmup_ratio=0.03,
                         source="AkaliKong/MiniOneRec rl.sh, rl.py, minionerec_trainer.py"),
}


def recipe_names() -> list[str]:
    """The named recipes.

    Example:
        >>> recipe_names()
        ['rere', 'minionerec']
    """
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """A recipe by name (an unknown name is a ValueError naming the choices).

    Example:
        >>> get_recipe("rerere")
        Traceback (most recent call last):
        ...
        ValueError: unknown recipe 'rerere': choose one of ['rere', 'minionerec']
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {recipe_names()}")
    return RECIPES[name]


__all__ = ["RECIPES", "Recipe", "get_recipe", "recipe_names"]
