"""``recgym bench``: every agent on one shared environment, one SFT start, one budget, one protocol.

What is shared, so that rows of the table compare:

* **Data**: one env (a registered id plus task overrides); every agent trains on its train split,
  validates on valid, and is tested on the *same* seeded sample of test requests
  (``test_requests`` drawn with ``test_seed``, whatever the training seed).
* **Start**: one SFT checkpoint, trained once (with the first seed) or loaded with ``--sft``;
  every RL agent, every seed, starts from a fresh copy of it.
* **Budget**: every RL agent samples ``rl_steps x requests_per_step x rollouts_per_request``
  rollouts (GRPO's and SimPO's group is ``rollouts_per_request``; RISER oversamples m =
  ``rollouts_per_request`` and keeps groups of n = ``riser_group``; plug-ins get
  ``group_size=rollouts_per_request``). MaskablePPO plays the same number of episodes.
* **Protocol**: HR/NDCG@{1,3,5,10,20}; LLM policies and MaskablePPO rank by constrained beam
  search (width ``beam``) over the prefix tree (:func:`agents.training.evaluate.evaluate`), classic
  rankers by their own scores (:func:`agents.training.evaluate.evaluate_ranker`). Trained agents are tested
  with their best-on-valid weights (for RL agents the SFT start competes, as in ``recgym train``).

Seeds: each RL agent, SASRec and MaskablePPO train once per seed. Agents that have nothing to seed
(popularity, transition) or that are shared by design (sft) run once; their result is recorded
under every seed with ``"shared_across_seeds": true`` (so their std is 0). Jobs run seed by seed
(every agent for the first seed, then the next), and ``results.json`` is rewritten after each, so a
bench stopped part-way holds whole seeds.

Outputs in ``--out``: ``results.json`` (per agent and seed: metrics, wall time, rollouts, config,
plus env / preset / machine), ``results.md`` (mean +- std over seeds), ``metrics.png`` (HR@10 and
NDCG@10 bars with std error bars), ``curves.png`` (rollout hit rate, entropy and valid HR@10
against rollouts for the RL agents and MaskablePPO; see :mod:`agents.bench.report`), and ``sft/``,
``runs/<agent>-seed<s>/`` with each run's ``metrics.jsonl`` and checkpoints (a rerun into the same
folder resumes them).

Under ``torchrun`` (``torchrun --nproc-per-node N -m agents.cli bench ...``) the SFT start, every
RL run and every test run data-parallel (:mod:`agents.parallel.distributed`); the classic baselines and
MaskablePPO are single-process models that every rank trains alike; rank 0 alone locks ``--out``,
writes and prints.

Plug-ins: a Python file or module that calls :func:`agents.learners.register_learner` when imported
(``--plugin``) adds an RL agent; see ``examples/reinforce_plugin.py``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm

from agents.plugins import load_plugin
from recgym.metrics import KS

BEAM_SUFFIX = "-beam"  # --agents grpo-beam: a learner on beam groups (rollout="beam")
SUBSET_SUFFIX = "-subset"  # --agents riser-subset: a learner on the requests of --subset
SELECT_K = 10  # the smallest test beam: HR@10 and NDCG@10 (the model-selection metric) need 10 items

# --agents ablation, as the RISER paper reports it: GRPO, RISER's components added one at a time on
# top of oversampling, RISER without each one, and RISER; all from the one SFT start, under the
# policy's objective (full vocabulary: every component acts). GRPO and "+oversample" train groups
# of the same size n (riser_group); oversampling variants draw m (rollouts_per_request) first.
_OFF = {"oversample": {"oversample": None}, "simpo": {"simpo_weight": 0.0}, "certainty": {"certainty_d": 1.0},
        "kl_cov": {"kl_cov_k": 0.0}}
ABLATION: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("grpo", {}),
    "+oversample": ("riser", {**_OFF["simpo"], **_OFF["certainty"], **_OFF["kl_cov"]}),
    **{f"+{name}": ("riser", {k: v for other, off in _OFF.items() if other not in ("oversample", name)
                              for k, v in off.items()}) for name in ("simpo", "certainty", "kl_cov")},
    **{f"-{name}": ("riser", dict(off)) for name, off in _OFF.items()},
    "riser": ("riser", {}),
}


@dataclass(frozen=True)
class BenchPreset:
    """A scale of the benchmark: env, model, SFT, the RL budget, evaluation and baselines' sizes.

    Args:
        name: the preset's name (``ci``, ``cpu``, ``paper``).
        env: a registered RecGen env id.
        task: RecGenTask overrides (``representation``, ``vocab_size``, ``dataset_kwargs``, ...).
        model_preset: offline model size (``tiny``, ``small``) unless ``model`` is given.
        model: a causal LM instead of ``model_preset``: a local folder, a hub name, or a named
            offline model such as ``smollm2-135m``.
        adapters: :class:`~agents.configs.AdapterConfig` settings for the LLM policy (e.g.
            ``{"lora_r": 8}``: LoRA; empty: every weight trains).
        train_split: the split SFT and RL train on: ``train``, or ``valid`` for D3 folders that
            publish only valid and test; then no split is left to select on, so nothing is
            validated and every agent is tested with its last weights.
        sft_steps: SFT optimizer steps (unused when ``sft_epochs`` is set).
        sft_batch_size: SFT batch: requests, or sequence windows under the compact template.
        sft_lr: SFT's AdamW learning rate.
        sft_eval_every: SFT steps between validations (0: once an epoch).
        sft_epochs: when set, SFT runs up to that many epochs (``sft_steps`` is then unused) and
            stops early by ``sft_patience``.
        sft_patience: SFT validations without a better NDCG@10 before stopping (with
            ``sft_epochs``; 0: never stop early).
        sft_dropout: :class:`~agents.configs.SFTConfig`'s dropout during SFT (0: none).
        sft_warmup_steps: :class:`~agents.configs.SFTConfig`'s warm-up steps.
        sft_weight_decay: :class:`~agents.configs.SFTConfig`'s AdamW weight decay.
        sft_unlikelihood: :class:`~agents.configs.SFTConfig`'s unlikelihood alpha (0: plain NLL).
        rl_steps: RL steps; the RL rollout budget is rl_steps x requests_per_step x
            rollouts_per_request.
        requests_per_step: distinct requests of each RL step.
        rollouts_per_request: rollouts drawn per request in an RL step (RISER de-duplicates them).
        riser_group: RISER's n (groups kept after de-duplicating ``rollouts_per_request``).
        rl_lr: :class:`~agents.training.rl.RLConfig`'s learning rate.
        mu: :class:`~agents.training.rl.RLConfig`'s optimizer passes over each batch of rollouts.
        minibatches: :class:`~agents.training.rl.RLConfig`'s optimizer steps per pass.
        rl_eval_every: RL steps between validations.
        eval_requests: validation sample size (None: the whole valid split).
        test_requests: the test sample size (None: every test request).
        test_seed: the seed of the test sample.
        beam: the test's beam width (50, the reference protocol; HR/NDCG@K for every K <= beam, so
            at least 10).
        valid_beam: validation's beam width (model selection by NDCG@10).
        exclude_history: whether the test never recommends an item of the request's own history,
            for every row alike: policies' searches prune them, rankers' lists drop them (SASRec's
            own exclusion is switched off: the protocol decides). Off: the reference protocol.
        sasrec_epochs: SASRec's training epochs (early stopping on valid).
        sasrec_hidden: SASRec's hidden size.
        sasrec_batch_size: SASRec's batch size.
        sasrec_num_threads: SASRec's CPU threads (1 is fastest for this small model on a busy CPU).
        sasrec_dropout: SASRec's dropout.
        sasrec_train_rows: SASRec's training rows (``all``: every train row, ``windows``: one
            sequence per window of a user's rows); a ranker's preset fields are ``<name>_<setting>``.
        ppo_envs: MaskablePPO's parallel envs (see
            :class:`~agents.baselines.maskable_ppo.MaskablePPOConfig`; on titles the one-hot prefix
            grows with item length x token count, so MaskablePPO is practical on SID catalogues).
        ppo_episodes_per_update: MaskablePPO's episodes per update.
        ppo_epochs: MaskablePPO's passes over each update's episodes.
        ppo_hidden: MaskablePPO's hidden size.
        ppo_item_tokens: whether MaskablePPO's observation holds the history's item tokens.
        ppo_item_ids: whether MaskablePPO's observation holds the history's item ids.

    Example:
        >>> PRESETS["ci"].rollout_budget
        5120
    """

    name: str
    env: str
    task: dict[str, Any] = field(default_factory=dict)
    model_preset: str = "tiny"
    model: str | None = None
    adapters: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    sft_steps: int = 300
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    sft_eval_every: int = 100
    sft_epochs: int | None = None
    sft_patience: int = 0
    sft_dropout: float = 0.0
    sft_warmup_steps: int = 20
    sft_weight_decay: float = 0.01
    sft_unlikelihood: float = 0.0
    rl_steps: int = 60
    requests_per_step: int = 16
    rollouts_per_request: int = 16
    riser_group: int = 12
    rl_lr: float = 1e-4
    mu: int = 1
    minibatches: int = 2
    rl_eval_every: int = 20
    eval_requests: int | None = None
    test_requests: int | None = 1000
    test_seed: int = 0
    beam: int = 50
    valid_beam: int = 20
    exclude_history: bool = False
    sasrec_epochs: int = 20
    sasrec_hidden: int = 64
    sasrec_batch_size: int = 128
    sasrec_num_threads: int | None = 1
    sasrec_dropout: float = 0.2
    sasrec_train_rows: str = "all"
    ppo_envs: int = 8
    ppo_episodes_per_update: int = 64
    ppo_epochs: int = 4
    ppo_hidden: int = 128
    ppo_item_tokens: bool = True
    ppo_item_ids: bool = True

    def __post_init__(self) -> None:
        if self.train_split not in ("train", "valid"):
            raise ValueError(f"train_split={self.train_split!r}: use 'train' or 'valid'")
        if not isinstance(self.adapters, dict):
            raise ValueError(f"adapters={self.adapters!r}: expected AdapterConfig settings as a dict, "
                             "e.g. {\"lora_r\": 8}")
        self.adapter_config()  # bad adapter settings fail here, naming the field
        if not isinstance(self.exclude_history, bool):
            raise ValueError(f"exclude_history={self.exclude_history!r}: use true or false")
        if not 2 <= self.riser_group <= self.rollouts_per_request:
            raise ValueError(f"riser_group={self.riser_group} must be in 2..rollouts_per_request="
                             f"{self.rollouts_per_request}")
        if self.beam < SELECT_K:  # HR/NDCG@K are reported for every K <= beam
            raise ValueError(f"beam={self.beam} must be at least {SELECT_K} (HR@{SELECT_K}, NDCG@{SELECT_K})")
        for name in ("sft_steps", "rl_steps", "requests_per_step", "sft_batch_size", "sasrec_epochs",
                     "ppo_envs", "ppo_episodes_per_update", "mu", "minibatches", "rollouts_per_request",
                     "valid_beam"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("test_requests", "eval_requests"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive or None (all requests), got {getattr(self, name)}")
        for name in ("sft_eval_every", "rl_eval_every", "test_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("sft_lr", "rl_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def adapter_config(self) -> Any:
        """The :class:`~agents.configs.AdapterConfig` of ``adapters`` (a ValueError names a bad field).

        Example:
            >>> PRESETS["cpu-llm"].adapter_config().lora_r
            8
        """
        from agents.configs import AdapterConfig, ConfigError

        try:
            return AdapterConfig(**self.adapters)
        except TypeError as err:
            raise ValueError(f"adapters: {err} (fields: lora_r, lora_alpha, lora_dropout, lora_targets, "
                             "freeze, train_embeddings)") from err
        except ConfigError as err:
            raise ValueError(f"adapters: {err}") from err

    @property
    def validates(self) -> bool:
        """Whether runs select their weights on the valid split (not when they train on it)."""
        return self.train_split != "valid"

    @property
    def rollout_budget(self) -> int:
        """Rollouts (episodes) every RL agent and MaskablePPO sample in training."""
        return self.rl_steps * self.requests_per_step * self.rollouts_per_request


PRESETS: dict[str, BenchPreset] = {
    # Offline synthetic SIDs, tiny model: the whole bench in a few minutes on one CPU thread.
    "ci": BenchPreset(
        name="ci", env="RecGen-Synthetic-v0",
        task={"representation": "sid", "vocab_size": 400, "template": "compact",
              "dataset_kwargs": {"num_items": 300, "num_users": 400}},
        model_preset="tiny", sft_steps=300, sft_batch_size=32, sft_lr=5e-3, sft_eval_every=100,
        rl_steps=40, requests_per_step=16, rollouts_per_request=8, riser_group=6, rl_lr=3e-4,
        rl_eval_every=10, eval_requests=None, test_requests=500, sasrec_epochs=20, sasrec_hidden=32,
        ppo_episodes_per_update=16, ppo_hidden=64),
    # Real Amazon Video Games (LC-Rec), the recipe that reaches TIGER's published NDCG@10 on this CPU
    # (benchmarks/bench_sft_games.py, sft-games-atomic-d0.3.json: test .0493 on all 50,546
    # requests, 26 min of SFT on 2 threads; with weight decay 0.1, picked on the whole valid split,
    # .0504: sft-games-atomic-d0.3-wd0.1.json, sft-games-valid-selection.json): one token per item
    # (sid_index="atomic", so an episode is one choice among 16,859 items), the `mini` model from
    # scratch on the compact prompt with the last 20 items, sequence-level SFT in batches of 128
    # users' windows, dropout 0.3, AdamW weight decay 0.1, 10 epochs
    # keeping the best valid NDCG@10 (2,000 requests; 20 epochs overfit, so no patience needed);
    # SASRec and the RL budget as in `cpu-sid`. Test: 5,000 requests at beam 50.
    "cpu": BenchPreset(
        name="cpu", env="RecGen-Games-v0",
        task={"max_history": 20, "template": "compact", "vocab_size": 257, "sid_index": "atomic"},
        model_preset="mini", sft_epochs=10, sft_patience=0, sft_batch_size=128, sft_lr=2e-3, sft_dropout=0.3,
        sft_weight_decay=0.1, sft_warmup_steps=100, sft_eval_every=0, rl_steps=100, requests_per_step=16,
        rollouts_per_request=16, riser_group=12, rl_lr=1e-4, rl_eval_every=50, eval_requests=2000,
        test_requests=5000, sasrec_epochs=12, sasrec_train_rows="windows", sasrec_hidden=64,
        sasrec_batch_size=64, sasrec_dropout=0.2,
        ppo_episodes_per_update=64, ppo_epochs=2, ppo_hidden=128, ppo_item_ids=False),
    # A real pretrained LM on this 2-core machine: SmolLM2-135M-Instruct with LoRA r = 8 on
    # office-d3 titles (D3 publishes valid and test only: valid trains, nothing is left to select
    # on, so every agent is tested with its last weights). Sized from one-thread measurements with
    # the other core busy (scripts in the README): an SFT step of 8 requests 44 s, an RL step of
    # 4 requests x 8 rollouts 105 s, beam search 8.6 s/request at width 10 and 106 s at width 50
    # (titles of up to 97 tokens; 50 beams pay the 49,152-way log-softmax at every step). Hence
    # the test's beam 10 on 50 requests: the reference scoring, a narrower beam; HR/NDCG@{1..10}.
    "cpu-llm": BenchPreset(
        name="cpu-llm", env="RecGen-v0", task={"dataset": "office-d3", "representation": "title",
                                                "max_history": 5},
        model="smollm2-135m", adapters={"lora_r": 8}, train_split="valid", sft_steps=60, sft_batch_size=8,
        sft_lr=1e-3, sft_eval_every=0, rl_steps=6, requests_per_step=4, rollouts_per_request=8,
        riser_group=6, rl_lr=1e-4, rl_eval_every=0, eval_requests=None, test_requests=50, beam=10,
        valid_beam=10, sasrec_epochs=20, sasrec_hidden=64),
    # The papers' scale: a pretrained Qwen2-1.5B-class model (--model PATH), titles, a GPU.
    "paper": BenchPreset(
        name="paper", env="RecGen-Games-v0", task={"dataset": "games", "representation": "title"},
        sft_steps=3000, sft_batch_size=64, sft_lr=3e-5, sft_eval_every=500, rl_steps=500,
        requests_per_step=32, rollouts_per_request=20, riser_group=16, rl_lr=1e-6, rl_eval_every=100,
        eval_requests=None, test_requests=None, sasrec_epochs=200, sasrec_hidden=64,
        sasrec_batch_size=256, sasrec_num_threads=None, ppo_episodes_per_update=64, ppo_hidden=256,
        ppo_item_tokens=False),
}
# `cpu-sid`: the `cpu` preset on LC-Rec's 4-level SIDs (the `cpu` preset until the one-token
# recipe; README's RL table on Games is this preset), with the SID recipe the SFT sweep picked
# (benchmarks/sweep_sft_games.py, benchmarks/results/sft-sweep-games/): the `mini` model from
# scratch on the compact prompt with the last 20 items, sequence-level SFT (418 batches of 128
# users' windows an epoch), dropout 0.2, up to 10 epochs with early stopping on valid NDCG@10
# over 2,000 requests; SASRec with cross-entropy over all items, the same history and dropout 0.2
# (benchmarks/results/sasrec-games*.json: test NDCG@10 .0603 after 12 epochs at dropout 0.2,
# .0527 after 30 at 0.5), 12 epochs of one sequence per window of a user's rows (70 s each here;
# every prefix row would cost 6x that an epoch). Test: 5,000 requests at beam 50, so that the
# paired bootstrap intervals resolve differences of about .005 in NDCG@10. All else as `cpu`.
PRESETS["cpu-sid"] = replace(
    PRESETS["cpu"], name="cpu-sid", task={"max_history": 20, "template": "compact", "vocab_size": 257},
    sft_patience=2, sft_dropout=0.2, sft_weight_decay=0.01)
PRESETS["paper"] = PRESETS.pop("paper")  # listed last


def get_preset(name: str, **overrides: Any) -> BenchPreset:
    """A preset by name with field overrides (unknown names are a ValueError naming the choices).

    Example:
        >>> get_preset("ci", rl_steps=2).rl_steps
        2
        >>> get_preset("huge")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --preset: unknown preset 'huge'; choose one of ['ci', 'cpu', ..., 'paper']
    """
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(BenchPreset)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"--preset-set: unknown preset field(s) {unknown}; known: {sorted(known)}")
    return replace(PRESETS[name], **overrides)


# -- agents ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSpec:
    """One row of the benchmark: a name, its kind and, for RL agents, the learner and its settings.

    ``kind`` is ``classic`` (popularity, transition, sasrec), ``zero_shot`` (the LM as built or
    pretrained, before any training), ``sft``, ``rl`` (a learner trained by
    :func:`agents.training.rl.train_rl` from the SFT policy) or ``maskable_ppo``. ``recipe`` names an
    :mod:`agents.recipes` recipe whose RL settings (but not its batch size: the budget is the
    preset's) the row trains with; ``subset``: the row trains on the requests of ``--subset`` (a
    ``recgym select`` file, e.g. MiniRec's pick), with the same budget.

    Example:
        >>> AgentSpec("+simpo", "rl", "riser", {"kl_cov_k": 0.0}).learner
        'riser'
    """

    name: str
    kind: str
    learner: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    subset: bool = False


def agent_choices() -> list[str]:
    """Every name ``--agents`` accepts: built-in agents, registered plug-in learners, ``ablation``.

    Example:
        >>> agent_choices()[:5]
        ['popularity', 'transition', 'sasrec', 'zero_shot', 'sft']
    """
    from agents.baselines import ranker_names
    from agents.learners import learner_names
    from agents.recipes import recipe_names

    learners = learner_names()
    return [*ranker_names(), "zero_shot", "sft", *learners, *(n + BEAM_SUFFIX for n in learners),
            *(n + SUBSET_SUFFIX for n in learners), *recipe_names(), "maskable_ppo", "ablation"]


def budget_settings(learner: str, preset: BenchPreset) -> dict[str, Any]:
    """The settings that give ``learner`` the preset's rollouts per request (each learner maps it).

    Example:
        >>> budget_settings("riser", PRESETS["ci"])
        {'group_size': 6, 'oversample': 8}
    """
    from agents.learners import budget_settings as learner_budget

    return learner_budget(learner, preset.rollouts_per_request, preset.riser_group)


def parse_agents(
    text: str, preset: BenchPreset, learner_settings: dict[str, dict[str, Any]] | None = None
) -> list[AgentSpec]:
    """``--agents`` (a comma list) as specs; ``ablation`` expands into RISER's ablation variants.

    ``learner_settings`` maps an agent name to extra learner settings (``--learner-set``).

    Example:
        >>> [s.name for s in parse_agents("sft,ablation", PRESETS["ci"])]  # doctest: +NORMALIZE_WHITESPACE
        ['sft', 'grpo', '+oversample', '+simpo', '+certainty', '+kl_cov', '-oversample', '-simpo',
         '-certainty', '-kl_cov', 'riser']
        >>> parse_agents("sft,ppo", PRESETS["ci"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --agents: unknown agent 'ppo'; choose from popularity, transition, ...
    """
    from agents.baselines import ranker_names
    from agents.learners import learner_names
    from agents.recipes import get_recipe, recipe_names

    extra = learner_settings or {}
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--agents: expected a comma-separated list, got {text!r}")
    specs: list[AgentSpec] = []
    for name in names:
        if name == "ablation":
            for variant, (learner, settings) in ABLATION.items():
                budget = budget_settings(learner, preset)
                if learner == "grpo":  # the same group size n as the oversampling variants
                    budget = {"group_size": preset.riser_group}
                merged = {**budget, **settings, **extra.get(variant, {})}
                specs.append(AgentSpec(variant, "rl", learner, merged))
        elif name in ranker_names() or name in ("zero_shot", "sft", "maskable_ppo"):
            kind = name if name in ("zero_shot", "sft", "maskable_ppo") else "classic"
            specs.append(AgentSpec(name, kind))
        elif name in learner_names():
            merged = {**budget_settings(name, preset), **extra.get(name, {})}
            specs.append(AgentSpec(name, "rl", name, merged))
        elif name.endswith(BEAM_SUFFIX) and name[:-len(BEAM_SUFFIX)] in learner_names():
            learner = name[:-len(BEAM_SUFFIX)]  # e.g. grpo-beam: GRPO on beam groups
            merged = {**budget_settings(learner, preset), "rollout": "beam", **extra.get(name, {})}
            specs.append(AgentSpec(name, "rl", learner, merged))
        elif name.endswith(SUBSET_SUFFIX) and name[:-len(SUBSET_SUFFIX)] in learner_names():
            learner = name[:-len(SUBSET_SUFFIX)]  # e.g. riser-subset: RISER on the --subset requests
            merged = {**budget_settings(learner, preset), **extra.get(name, {})}
            specs.append(AgentSpec(name, "rl", learner, merged, subset=True))
        elif name in recipe_names():  # the recipe's learner settings within the preset's budget
            recipe = get_recipe(name)
            merged = recipe.learner_settings(**budget_settings(recipe.learner, preset), **extra.get(name, {}))
            specs.append(AgentSpec(name, "rl", recipe.learner, merged, recipe=name))
        else:
            raise ValueError(f"--agents: unknown agent {name!r}; choose from {', '.join(agent_choices())}")
    seen = [s.name for s in specs]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise ValueError(f"--agents: {duplicates} listed twice (ablation already holds grpo and riser)")
    unknown = sorted(set(extra) - set(seen))
    if unknown:
        raise ValueError(f"--learner-set: {unknown} are not RL agents of this bench ({seen})")
    return specs


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` (comma-separated non-negative integers, distinct) as a list.

    Example:
        >>> parse_seeds("0,1")
        [0, 1]
        >>> parse_seeds("0,x")
        Traceback (most recent call last):
        ...
        ValueError: --seeds: expected distinct non-negative integers like 0,1, got '0,x'
    """
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds: expected distinct non-negative integers like 0,1, got {text!r}")
    return seeds


# -- running -----------------------------------------------------------------------------------------


def run_bench(
    preset: BenchPreset,
    agents: Sequence[AgentSpec],
    seeds: Sequence[int],
    out: str | os.PathLike[str],
    *,
    task_overrides: dict[str, Any] | None = None,
    sft: str | None = None,
    subset: str | None = None,
    device: str | None = None,
    progress: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Train and test every agent for every seed; write results.json/.md, metrics.png, curves.png.

    ``subset`` (a ``recgym select`` file) is the request pool of the ``-subset`` agents.

    Returns the results dict written to ``results.json``. ``out`` is locked while the bench runs.
    A rerun into the same ``out`` resumes its SFT and RL runs when their settings are the same
    and is refused (before anything trains) when they differ; ``restart`` starts every run over.

    Example:
        >>> # run_bench(PRESETS["ci"], parse_agents("popularity,sft,grpo", PRESETS["ci"]), [0], "runs/b")
    """
    from agents.training.runs import lock_on_main

    out = Path(out)
    seeds = list(seeds)
    _check_learners(agents)
    if any(a.subset for a in agents) and subset is None:
        names = [a.name for a in agents if a.subset]
        raise ValueError(f"--agents {names} train on a subset: pass --subset FILE (a `recgym select` file)")
    for seed in seeds:  # every training config is checked before anything is loaded or trained
        _sft_config(preset, seed, progress, preset.sft_batch_size)
        _rl_config(preset, seed, progress)
    if any(a.kind == "maskable_ppo" for a in agents):
        from agents.baselines.maskable_ppo import import_maskable_ppo

        import_maskable_ppo()  # fail before any training when sb3-contrib is missing
    if preset.name == "paper" and any(a.kind in ("sft", "rl") for a in agents) and not (preset.model or sft):
        raise ValueError("--model: the paper preset needs a local pretrained causal LM (e.g. Qwen2-1.5B) "
                         "or --sft DIR")
    with lock_on_main(out) as main:  # under torchrun rank 0 alone locks and writes
        return _run_bench(preset, agents, seeds, out, task_overrides, sft, subset, device, progress and main,
                          restart)


def _run_bench(
    preset: BenchPreset, agents: Sequence[AgentSpec], seeds: list[int], out: Path,
    task_overrides: dict[str, Any] | None, sft: str | None, subset: str | None, device: str | None,
    progress: bool, restart: bool,
) -> dict[str, Any]:
    import torch

    from agents.bench.report import machine_info, write_report
    from agents.build import build_policy, json_text, make_task, write_json
    from agents.model.policy import LLMPolicy
    from agents.parallel import distributed as dist
    from agents.training.checkpoint import write_folder_atomically
    from agents.training.evaluate import select_rows
    from agents.training.tracking import write_atomically

    main = dist.is_main()
    if restart and main:  # the runs start over in train_sft / train_rl; the bench's own outputs go now
        for name in ("results.json", "results.md", "metrics.png", "curves.png"):
            (out / name).unlink(missing_ok=True)
        if (out / "sft" / "final").is_dir():
            shutil.rmtree(out / "sft" / "final")
    if not progress:  # also the bars transformers shows while saving and loading weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    task = {**preset.task, **(task_overrides or {})}
    if "dataset_kwargs" in preset.task and "dataset_kwargs" in (task_overrides or {}):
        task["dataset_kwargs"] = {**preset.task["dataset_kwargs"], **task_overrides["dataset_kwargs"]}
    needs_llm = any(a.kind in ("sft", "rl") for a in agents)
    policy = LLMPolicy.from_pretrained(sft, device=device) if sft and needs_llm else None
    source = f"--sft {sft}"
    train = make_task(preset.env, preset.train_split, task,
                      tokenizer=policy.items if policy is not None else preset.model, source=source)
    valid = make_task(preset.env, "valid", task, tokenizer=train.items, source=source)
    test = make_task(preset.env, "test", task, tokenizer=train.items, source=source)
    tasks = SimpleNamespace(train=train, valid=valid if valid.num_requests and preset.validates else None,
                            test=test)
    _check_rl_folders(agents, seeds, tasks, preset, task, out, progress, restart, subset)
    test_requests = len(select_rows(test.num_requests, preset.test_requests))
    results: dict[str, Any] = {
        "env": preset.env, "task": task, "representation": train.representation,
        "preset": asdict(preset), "seeds": seeds, "agents_order": [a.name for a in agents],
        "budget": {"rl_steps": preset.rl_steps, "requests_per_step": preset.requests_per_step,
                   "rollouts_per_request": preset.rollouts_per_request, "rollouts": preset.rollout_budget},
        "test_protocol": {"split": "test", "sample_seed": preset.test_seed, "beam": preset.beam,
                          "ks": [k for k in KS if k <= preset.beam], "requests": test_requests,
                          "history_excluded": preset.exclude_history,
                          "scoring": "the policy's objective (full-vocabulary log-softmax, disallowed tokens "
                                     "masked, no renormalisation, no length penalty) unless --sft loads a "
                                     "constrained policy",
                          "model_selection": (f"NDCG@10 on {preset.eval_requests or 'all'} valid requests, "
                                              f"beam {preset.valid_beam}") if preset.validates else
                          "none: the valid split trains (train_split=valid), every agent is tested with its "
                          "last weights"},
        "machine": machine_info(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "agents": {},
    }
    sft_dir: Path | None = None
    if needs_llm:
        if policy is None:  # the one SFT start, trained with the first seed
            policy = build_policy(train.items, model=preset.model, preset=preset.model_preset, seed=seeds[0],
                                  device=device, adapters=preset.adapter_config())
            results["sft"] = _train_sft(policy, tasks, preset, seeds[0], out / "sft", progress, restart,
                                        _run_info(preset, task))
            sft_dir = out / "sft" / "final"  # the best-on-valid weights train_sft ends with
            with dist.on_main(f"saving {sft_dir}") as writing:  # the other ranks read it once written
                if writing:
                    write_folder_atomically(sft_dir, policy.save_pretrained)
        else:
            results["sft"] = {"loaded": sft, "config": {"loaded": sft}, "train_seconds": 0.0}
            sft_dir = Path(sft)
    # Seed-major: a bench stopped part-way holds whole seeds (every agent), so its table compares.
    jobs = [(a, s) for s in seeds for a in agents if _per_seed(a) or s == seeds[0]]
    finished = _finished_runs(out)  # a rerun keeps the tests its last run finished with these settings
    digests: dict[str, str] = {}
    bar = tqdm(jobs, desc="bench", disable=not progress)
    for spec, seed in bar:
        bar.set_description(f"bench {spec.name} seed {seed}")
        fingerprint = _job_fingerprint(spec, seed, results, sft_dir, subset, digests)
        record = finished.get((spec.name, str(seed)))
        if record is not None and record.get("fingerprint") == fingerprint:
            if main:
                _say_reused(spec, seed, out)
            record = {k: v for k, v in record.items() if k not in ("seed", "shared_across_seeds")}
            runs = results["agents"].setdefault(spec.name, {"kind": spec.kind, "runs": {}})["runs"]
            for s in (seeds if not _per_seed(spec) else [seed]):
                runs[str(s)] = {"seed": s, **record, "shared_across_seeds": not _per_seed(spec)}
            if main:
                write_atomically(out / "results.json", json_text(results))
            continue
        torch.manual_seed(seed)
        tick = time.time()
        run_dir = out / "runs" / f"{_slug(spec.name)}-seed{seed}"
        if spec.kind == "classic":
            record = _run_classic(spec, seed, tasks, preset, device, progress)
        elif spec.kind == "zero_shot":  # the model as built, before any training
            start = build_policy(train.items, model=preset.model, preset=preset.model_preset, seed=seeds[0],
                                 device=device, adapters=preset.adapter_config())
            record = {"metrics": _test(start, tasks, preset, progress), "rollouts": 0, "train_seconds": 0.0,
                      "config": {"model": preset.model or preset.model_preset}}
            del start
        elif spec.kind == "sft":  # trained (or loaded) above, once: its time counts here
            tick -= results["sft"]["train_seconds"]
            record = {"metrics": _test(policy, tasks, preset, progress), "rollouts": 0,
                      "train_seconds": results["sft"]["train_seconds"], "config": results["sft"]["config"]}
        elif spec.kind == "maskable_ppo":  # no checkpoints: starts over (its log on rank 0 only)
            record = _run_maskable_ppo(seed, tasks, preset, run_dir if main else None, progress)
        else:
            assert sft_dir is not None
            record = _run_rl(spec, seed, tasks, preset, sft_dir, run_dir, device, progress, restart,
                             _run_info(preset, task), subset if spec.subset else None)
        if spec.kind in ("rl", "maskable_ppo"):  # its metrics.jsonl: the curves
            record["run_dir"] = str(run_dir)
        record["wall_seconds"] = round(time.time() - tick, 3)
        record["fingerprint"] = fingerprint
        runs = results["agents"].setdefault(spec.name, {"kind": spec.kind, "runs": {}})["runs"]
        for s in (seeds if not _per_seed(spec) else [seed]):
            runs[str(s)] = {"seed": s, **record, "shared_across_seeds": not _per_seed(spec)}
        if main:
            write_atomically(out / "results.json", json_text(results))  # partial results survive
    bar.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if main:
        print(write_report(results, out))
        write_json(out / "results.json", results)
    return results


def _finished_runs(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The runs a previous bench in ``out`` finished, by (agent, seed), from its ``results.json`` (none
    when it is missing or unreadable: then every job runs)."""
    import json

    try:
        previous = json.loads((out / "results.json").read_text())
        return {(name, seed): run for name, agent in previous["agents"].items()
                for seed, run in agent["runs"].items() if isinstance(run, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _say_reused(spec: AgentSpec, seed: int, out: Path) -> None:
    import sys

    tqdm.write(f"bench: {spec.name} seed {seed}: reusing its finished test in {out / 'results.json'} (the "
               "same settings; --restart runs it again)", file=sys.stderr)


def _job_fingerprint(
    spec: AgentSpec, seed: int, results: dict[str, Any], sft_dir: Path | None, subset: str | None,
    digests: dict[str, str],
) -> str:
    """SHA-256 of everything that decides a job's record: the agent and its settings, the seed, the env,
    task, representation, preset and test protocol, the SFT start (its settings and steps, and the
    weights of the policy folder the LLM agents start from) and the ``--subset`` file's bytes. ``digests``
    caches the files' hashes within one bench."""
    import hashlib
    import json

    def digest(path: Path) -> str:
        key = str(path)
        if key not in digests:
            sha = hashlib.sha256()
            weights = (".safetensors", ".bin", ".pt")  # a policy folder: its weights (its tokenizer files
            # record where they were loaded from; the catalogue and tokenization are in the task's record)
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in weights) \
                if path.is_dir() else [path]
            for file in files:
                sha.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
                with open(file, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        sha.update(block)
            digests[key] = sha.hexdigest()
        return digests[key]

    job: dict[str, Any] = {"agent": asdict(spec), "seed": seed}
    for key in ("env", "task", "representation", "preset", "test_protocol"):
        job[key] = results.get(key)
    if spec.kind in ("sft", "rl") and sft_dir is not None:
        sft = results.get("sft", {})
        job["sft"] = {k: sft.get(k) for k in ("config", "loaded", "steps", "best_step", "best_valid")}
        job["start"] = digest(Path(sft_dir))
    if spec.subset and subset is not None:
        job["subset"] = digest(Path(subset))
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()


def _per_seed(spec: AgentSpec) -> bool:
    """Whether an agent trains once per seed (popularity and transition have nothing to seed; the
    SFT policy is shared by design)."""
    if spec.kind == "classic":
        from agents.baselines import ranker_entry

        return ranker_entry(spec.name).seeded
    return spec.kind in ("rl", "maskable_ppo")


def _slug(name: str) -> str:
    return name.replace("+", "plus_").replace("/", "_")


def _check_learners(agents: Sequence[AgentSpec]) -> None:
    """Build every RL agent's learner once, so bad settings fail before any training."""
    from agents.learners import make_learner

    for spec in agents:
        if spec.kind == "rl":
            try:
                learner = make_learner(spec.learner, **spec.settings)
            except TypeError as err:
                raise ValueError(f"--agents: learner {spec.learner!r} rejected the bench's settings "
                                 f"{spec.settings}: {err}") from err
            _check_budget(spec, learner)


def _check_budget(spec: AgentSpec, learner: Any) -> None:
    wanted = spec.settings.get("oversample") or spec.settings["group_size"]
    if learner.rollouts_per_request != wanted:
        raise ValueError(f"--agents: {spec.name} draws {learner.rollouts_per_request} rollouts per request, "
                         f"the bench's budget is {wanted}: its factory must honour group_size")


def _sft_config(preset: BenchPreset, seed: int, progress: bool, train_rows: int) -> Any:
    """SFT settings: ``sft_epochs`` with early stopping, or ``sft_steps`` over enough epochs of
    ``train_rows`` (requests, or sequence windows at the sequence level)."""
    from agents.configs import SFTConfig

    if preset.sft_epochs is not None:
        budget = {"epochs": preset.sft_epochs, "max_steps": None, "patience": preset.sft_patience}
    else:
        epochs = -(-preset.sft_steps * preset.sft_batch_size // train_rows)  # enough epochs
        budget = {"epochs": max(1, epochs), "max_steps": preset.sft_steps, "patience": 0}
    return SFTConfig(batch_size=preset.sft_batch_size, lr=preset.sft_lr, eval_every=preset.sft_eval_every,
                     eval_requests=preset.eval_requests, beam=preset.valid_beam, seed=seed,
                     progress=progress, dropout=preset.sft_dropout, warmup_steps=preset.sft_warmup_steps,
                     weight_decay=preset.sft_weight_decay, unlikelihood=preset.sft_unlikelihood, **budget)


def _rl_config(preset: BenchPreset, seed: int, progress: bool, recipe: str | None = None) -> Any:
    """The preset's RL settings; a recipe's optimizer settings replace them, its batch size does not."""
    from agents.configs import RLConfig
    from agents.recipes import get_recipe

    # patience=0: every RL agent spends the whole rollout budget (the best weights still win).
    config = RLConfig(steps=preset.rl_steps, requests_per_step=preset.requests_per_step, lr=preset.rl_lr,
                      mu=preset.mu, minibatches=preset.minibatches, eval_every=preset.rl_eval_every,
                      eval_requests=preset.eval_requests, beam=preset.valid_beam, patience=0, seed=seed,
                      progress=progress, env_id=preset.env)
    return get_recipe(recipe).rl_config(config, keep=("steps", "requests_per_step")) if recipe else config


def _run_info(preset: BenchPreset, task: dict[str, Any]) -> dict[str, Any]:
    """What a bench run's fingerprint adds to its config and data: the env, task options, model (and
    the adapters and training split where they are not the defaults)."""
    from agents.build import adapter_record

    info = {"env": preset.env, "task": task, "model": preset.model or preset.model_preset}
    if preset.adapter_config().enabled:
        info["adapters"] = adapter_record(preset.adapter_config())
    if preset.train_split != "train":
        info["train_split"] = preset.train_split
    return info


def _check_rl_folders(
    agents: Sequence[AgentSpec], seeds: Sequence[int], tasks: SimpleNamespace, preset: BenchPreset,
    task: dict[str, Any], out: Path, progress: bool, restart: bool, subset: str | None = None,
) -> None:
    """Refuse, before anything trains, an RL run folder that holds a run with other settings."""
    from agents.learners import make_learner
    from agents.training.runs import check_run_folder, run_fingerprint

    for spec in agents:
        if spec.kind != "rl":
            continue
        learner = make_learner(spec.learner, **spec.settings)
        for seed in seeds:
            sampler = _subset_sampler(subset if spec.subset else None, tasks, preset, seed)
            fingerprint = run_fingerprint("rl", _rl_config(preset, seed, progress, spec.recipe), tasks.train,
                                          tasks.valid, sampler=sampler,
                                          learner=learner, extra=_run_info(preset, task))
            check_run_folder(out / "runs" / f"{_slug(spec.name)}-seed{seed}", fingerprint, restart=restart,
                             skip=("start",))


def _train_sft(
    policy: Any, tasks: SimpleNamespace, preset: BenchPreset, seed: int, run_dir: Path, progress: bool,
    restart: bool = False, run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from agents.training.runs import DivergedError
    from agents.training.sft import sft_objective, train_sft

    tick = time.time()
    config = _sft_config(preset, seed, progress,
                         sft_objective(policy, tasks.train, unlikelihood=preset.sft_unlikelihood).size)
    try:
        summary = train_sft(policy, tasks.train, tasks.valid, config, run_dir=run_dir, restart=restart,
                            run_info=run_info)
    except DivergedError as err:
        raise err.with_flag("--preset-set sft_lr=...") from err
    return {**summary, "config": {**asdict(config), "model": preset.model or preset.model_preset},
            "train_seconds": round(time.time() - tick, 2)}


def _test(agent: Any, tasks: SimpleNamespace, preset: BenchPreset, progress: bool) -> dict[str, Any]:
    """The shared protocol for agents that search the prefix tree (LLM policies, MaskablePPO).

    The metrics carry ``first_hit_ranks``: per test request, in the order of the seeded sample
    every agent shares, the 0-based rank of its first hit (-1: none), for the paired comparisons
    of :func:`agents.bench.report.paired_differences`.
    """
    from agents.training.evaluate import evaluate

    metrics = evaluate(agent, tasks.test, beam=preset.beam, max_requests=preset.test_requests,
                       seed=preset.test_seed, progress=progress, per_request=True,
                       exclude_history=preset.exclude_history)
    del metrics["rows"]  # the same seeded sample for every agent: the ranks pair by position
    return metrics


def _run_classic(
    spec: AgentSpec, seed: int, tasks: SimpleNamespace, preset: BenchPreset, device: str | None,
    progress: bool,
) -> dict[str, Any]:
    from agents.baselines import make_ranker, ranker_entry
    from agents.training.evaluate import evaluate_ranker

    num_items = tasks.train.dataset.catalogue.num_items
    tick = time.time()
    settings = ranker_settings(spec.name, preset)
    if ranker_entry(spec.name).seeded:  # trained models: device and progress bars too
        settings.update(device=device or ("cuda" if _cuda() else "cpu"), progress=progress)
    model = make_ranker(spec.name, seed=seed, **settings)
    valid = tasks.valid.examples if tasks.valid is not None else None
    model.fit(tasks.train.examples, num_items, valid=valid)
    train_seconds = time.time() - tick
    metrics = evaluate_ranker(model, tasks.test.examples, max_requests=preset.test_requests,
                              seed=preset.test_seed, per_request=True, exclude_history=preset.exclude_history)
    del metrics["rows"]  # as in _test: first_hit_ranks pair with every agent's by position
    described = model.describe() if hasattr(model, "describe") else {}
    return {"metrics": metrics, "rollouts": 0, "train_seconds": round(train_seconds, 2),
            "config": {"name": spec.name, **described}}


def ranker_settings(name: str, preset: BenchPreset) -> dict[str, Any]:
    """A ranker's settings from the preset's ``<name>_<setting>`` fields.

    Example:
        >>> ranker_settings("sasrec", PRESETS["ci"])
        {'epochs': 20, 'hidden': 32, 'batch_size': 128, 'num_threads': 1, 'dropout': 0.2, 'train_rows': 'all'}
    """
    head = f"{name}_"
    return {f.name[len(head):]: getattr(preset, f.name) for f in fields(preset) if f.name.startswith(head)}


def _subset_sampler(subset: str | None, tasks: SimpleNamespace, preset: BenchPreset, seed: int) -> Any:
    """The request sampler of a ``-subset`` row (None: every train request, the loop's default)."""
    from agents.build import subset_sampler

    return None if subset is None else subset_sampler(subset, tasks.train.num_requests,
                                                      preset.requests_per_step, seed, task=tasks.train)[0]


def _run_rl(
    spec: AgentSpec, seed: int, tasks: SimpleNamespace, preset: BenchPreset, sft_dir: Path, run_dir: Path,
    device: str | None, progress: bool, restart: bool = False, run_info: dict[str, Any] | None = None,
    subset: str | None = None,
) -> dict[str, Any]:
    from agents.learners import make_learner
    from agents.model.policy import LLMPolicy
    from agents.training.rl import train_rl
    from agents.training.runs import DivergedError

    learner = make_learner(spec.learner, **spec.settings)
    _check_budget(spec, learner)
    policy = LLMPolicy.from_pretrained(sft_dir, device=device)  # a fresh copy of the one SFT start
    config = _rl_config(preset, seed, progress, spec.recipe)
    try:
        summary = train_rl(policy, learner, tasks.train, tasks.valid, config, run_dir=run_dir,
                           sampler=_subset_sampler(subset, tasks, preset, seed), restart=restart,
                           run_info=run_info)
    except DivergedError as err:
        raise err.with_flag("--preset-set rl_lr=...") from err
    metrics = _test(policy, tasks, preset, progress)
    described = {**learner.describe(), "rl": asdict(config), "start": str(sft_dir)}
    if subset is not None:
        described["subset"] = str(subset)
    return {"metrics": metrics, "rollouts": summary["rollouts"], "train_seconds": summary["seconds"],
            "config": described, "summary": summary}


def _run_maskable_ppo(
    seed: int, tasks: SimpleNamespace, preset: BenchPreset, run_dir: Path | None, progress: bool
) -> dict[str, Any]:
    from agents.baselines.maskable_ppo import MaskablePPOConfig, train_maskable_ppo
    from agents.training.runs import clear_run

    if run_dir is not None:
        clear_run(run_dir)  # MaskablePPO keeps no checkpoint: each bench run trains it anew (and logs anew)
    config = MaskablePPOConfig(num_envs=preset.ppo_envs, episodes_per_update=preset.ppo_episodes_per_update,
                               epochs=preset.ppo_epochs, hidden=preset.ppo_hidden,
                               item_tokens=preset.ppo_item_tokens, item_ids=preset.ppo_item_ids, seed=seed,
                               progress=progress)
    every = preset.rl_eval_every * preset.requests_per_step * preset.rollouts_per_request
    agent, summary = train_maskable_ppo(tasks.train, tasks.valid, preset.rollout_budget, config,
                                        run_dir=run_dir, eval_every_episodes=every,
                                        eval_requests=preset.eval_requests, beam=preset.valid_beam)
    return {"metrics": _test(agent, tasks, preset, progress), "rollouts": summary["episodes"],
            "train_seconds": summary["seconds"], "config": {"name": "maskable_ppo", **summary["config"]},
            "summary": {k: v for k, v in summary.items() if k != "config"}}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["ABLATION", "AgentSpec", "BenchPreset", "PRESETS", "agent_choices", "budget_settings",
           "get_preset", "load_plugin", "parse_agents", "parse_seeds", "run_bench"]
