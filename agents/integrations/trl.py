"""recgym for TRL users: a RecGen env's prompts, prefix-tree constraint and reward for ``GRPOTrainer``.

Three pieces, each usable on its own (tested against ``trl>=1.16,<1.17``; ``pip install -e ".[trl]"``):

- :func:`prompt_dataset`: the env's requests as a ``datasets.Dataset`` with a text ``prompt`` column
  (exactly the env's prompt tokens once TRL tokenizes it) and ``row``, ``target`` and ``history`` columns.
- :class:`RecGymReward`: the env's reward (``task.reward``: ``hit``, ``ranking`` or ``rank_discounted``) as a
  TRL reward function. Each completion's token ids are walked down the prefix tree; a complete item is
  paid by :meth:`RecGenTask.rewards <recgym.envs.task.RecGenTask.rewards>`, a path that leaves the tree (or
  stops short of an item) is invalid and earns ``miss_reward``, exactly as a
  :class:`~recgym.envs.vector.RecGenVectorEnv` pays it. TRL's ``num_generations`` consecutive completions
  of one prompt are one ranked list (completion j has rank j), like a vector env's group, so
  ``ranking``'s list part is paid as the vector env pays it.
- :class:`TreeLogitsProcessor` and ``ConstrainedGRPOTrainer``: TRL (1.16) builds its
  ``GenerationConfig`` from ``GRPOConfig.generation_kwargs``, which cannot carry a logits processor or a
  ``prefix_allowed_tokens_fn``, so there is no hook for a constraint. ``ConstrainedGRPOTrainer`` is
  ``GRPOTrainer`` with one more keyword, ``tree``: while TRL generates (the transformers path; not vLLM)
  the model's ``generate`` gets a :class:`TreeLogitsProcessor`, so every completion is a catalogue item.
  Without it the reward function still reports the invalid-output rate (``recgym/invalid_rate``).

Example (``examples/trl_grpo.py`` is the whole script)::

    from trl import GRPOConfig
    from agents.integrations.trl import ConstrainedGRPOTrainer, RecGymReward, prompt_dataset

    config = GRPOConfig(num_generations=4, max_completion_length=task.max_response_len, ...)
    trainer = ConstrainedGRPOTrainer(model=model, processing_class=task.items.tokenizer,
                                     reward_funcs=RecGymReward(task, num_generations=4),
                                     train_dataset=prompt_dataset(task), args=config, tree=task.tree)
    trainer.train()

``trl``, ``datasets`` and ``torch`` are imported only when used: importing this module needs none of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recgym._checks import check_int
from recgym.rewards import list_bonus

if TYPE_CHECKING:
    import datasets
    import torch

    from recgym.envs.task import RecGenTask
    from recgym.tree import PrefixTree

TRL_VERSIONS = ">=1.16,<1.17"
"""The TRL versions this module is tested against (the ``trl`` extra pins the same range)."""


def prompt_dataset(task: RecGenTask, rows: Sequence[int] | np.ndarray | None = None) -> datasets.Dataset:
    """The requests at ``rows`` of the task's split (default: all) as a TRL prompt dataset.

    Columns: ``prompt`` (the env's prompt text), ``row``, ``target`` and ``history`` (item ids). The
    text tokenizes (``task.items.tokenizer(text)``, as TRL does) to exactly the env's prompt ids; a
    template whose prompts are not text (``compact``) is a ValueError.

    Example (needs ``datasets``; tests/test_trl.py runs it)::

        ds = prompt_dataset(RecGenTask("synthetic", representation="sid"), [0, 1])
        ds.column_names  # ['prompt', 'row', 'target', 'history']
    """
    import datasets

    if task.items.template.compact:
        raise ValueError("the compact template's prompts are token ids, not text; TRL tokenizes text "
                         "prompts: use the instruction template")
    rows = np.arange(task.num_requests) if rows is None else np.asarray(rows, dtype=np.int64)
    requests = [task.request(int(r)) for r in rows.tolist()]
    texts = [task.items.prompt_text(r.history) for r in requests]
    if texts:  # the text TRL will tokenize must be the env's prompt, token for token
        ids, lens = task.prompt_tokens(rows[:1])
        trl_ids = task.items.tokenizer(text=texts[:1])["input_ids"][0]
        if list(trl_ids) != ids[0, : lens[0]].tolist():
            raise ValueError("the tokenizer adds tokens to the prompt text (special tokens?), so TRL's "
                             "prompt ids would differ from the env's")
    return datasets.Dataset.from_dict({
        "prompt": texts,
        "row": [r.row for r in requests],
        "target": [r.target for r in requests],
        "history": [list(r.history) for r in requests],
    })


def completion_states(tree: PrefixTree, completion_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """The tree node each completion (token ids, the end token included) reaches; -1 where it leaves
    the tree or stops before an item is complete (an invalid output).

    One tree step per token position for all completions at once (ragged completions are padded).

    Example:
        >>> from recgym.tree import PrefixTree
        >>> tree = PrefixTree([[1, 2, 0], [1, 3, 0]], vocab_size=4)
        >>> completion_states(tree, [[1, 2, 0], [1, 3], [2, 0], [1, 3, 0, 0]])  # complete, short, off, past
        array([ 4, -1, -1, -1])
    """
    lengths = np.array([len(ids) for ids in completion_ids], dtype=np.int64)
    tokens = np.zeros((len(lengths), int(lengths.max(initial=0))), dtype=np.int64)
    tokens[np.arange(tokens.shape[1]) < lengths[:, None]] = np.concatenate(
        [np.asarray(ids, dtype=np.int64).ravel() for ids in completion_ids] or [np.zeros(0, np.int64)])
    states = np.zeros(len(lengths), dtype=np.int64)  # the root
    for j in range(tokens.shape[1]):
        live = (j < lengths) & (states >= 0)  # -1 stays -1: the completion has left the tree
        states = np.where(live, tree.step(np.maximum(states, 0), tokens[:, j]), states)
    valid = states >= 0
    states[valid] = np.where(tree.is_complete(states[valid]), states[valid], -1)
    return states


class RecGymReward:
    """The env's reward as a TRL reward function: ``reward(prompts=..., completions=..., completion_ids=...,
    target=[...], **columns) -> list[float]``.

    Args:
        task: the :class:`~recgym.envs.task.RecGenTask` whose tree, hit test and reward
            (``task.reward``, ``hit_reward``, ``miss_reward``) pay; a ``reward_fn`` task is not supported.
        num_generations: TRL's ``GRPOConfig.num_generations``: consecutive completions of one prompt form
            one ranked list (completion j has rank j), as in a vector env's ``group_size``.

    After each call ``last_hits`` and ``last_invalid`` hold the per-completion hits and invalid outputs;
    ``recgym/hit_rate`` and ``recgym/invalid_rate`` go to TRL's logs through its ``log_metric``.
    """

    __name__ = "recgym"  # TRL names a reward function's logged columns after it

    def __init__(self, task: RecGenTask, num_generations: int = 1) -> None:
        if task.reward_fn is not None:
            raise ValueError("RecGymReward pays task.reward; a task with a reward_fn is not supported")
        self.task = task
        self.num_generations = check_int(num_generations, "num_generations", minimum=1)
        self.last_hits = np.zeros(0, bool)
        self.last_invalid = np.zeros(0, bool)

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None, target: Sequence[int] | None = None,
        log_metric: Any = None, **columns: Any,
    ) -> list[float]:
        if target is None:
            raise ValueError("the dataset needs a 'target' column (see prompt_dataset)")
        task = self.task
        if completion_ids is None:  # text only: the end token was decoded away, put it back
            if completions is None:
                raise ValueError("give completion_ids or completions")
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            encoded = task.items.tokenizer(texts, add_special_tokens=False)["input_ids"]
            completion_ids = [[*ids, task.eos_token_id] for ids in encoded]
        n, g = len(completion_ids), self.num_generations
        if len(target) != n or n % g:
            raise ValueError(f"{n} completions and {len(target)} targets: both must be the same multiple of "
                             f"num_generations={g}")
        targets = np.asarray(target, dtype=np.int64)
        if (targets.reshape(-1, g) != targets.reshape(-1, g)[:, :1]).any():
            raise ValueError(f"the {g} completions of a group have different targets: num_generations must "
                             "be GRPOConfig.num_generations")
        states = completion_states(task.tree, completion_ids)
        valid = states >= 0
        ranks = np.arange(n) % g
        rewards = np.full(n, task.miss_reward, dtype=np.float64)
        hits = np.zeros(n, dtype=bool)
        if valid.any():
            rewards[valid], hits[valid] = task.rewards(states[valid], targets[valid], ranks=ranks[valid])
        rewards += list_bonus(hits.reshape(-1, g), task.reward).ravel()
        self.last_hits, self.last_invalid = hits, ~valid
        if log_metric is not None:
            log_metric("recgym/hit_rate", float(hits.mean()))
            log_metric("recgym/invalid_rate", float((~valid).mean()))
        return rewards.tolist()


class TreeLogitsProcessor:
    """A transformers logits processor that allows only the prefix tree's next tokens.

    ``prompt_len`` is the width of the (left-padded) prompt batch: tokens after it are the completion.
    A finished or invalid row may only emit the end token. Use one per ``generate`` call.
    """

    def __init__(self, tree: PrefixTree, prompt_len: int, eos_token_id: int) -> None:
        self.tree = tree
        self.prompt_len = prompt_len
        self.eos_token_id = eos_token_id
        self._states: torch.Tensor | None = None
        self._tables: Any = None
        self._device: Any = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self._tables is None or self._device != scores.device:
            self._tables, self._device = self.tree.torch_tables(scores.device), scores.device
        generated = input_ids.shape[1] - self.prompt_len
        if generated == 0 or self._states is None:
            self._states = torch.zeros(input_ids.shape[0], dtype=torch.long, device=scores.device)
        else:
            last = input_ids[:, -1].to(scores.device)
            alive = self._states >= 0
            nxt = self._tables.step(self._states.clamp(min=0), last)
            self._states = torch.where(alive, nxt, self._states)
        alive = self._states >= 0
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        width = max(self.tree.vocab_size, scores.shape[1])  # a padded embedding matrix is wider
        mask |= self._tables.mask(self._states.clamp(min=0), width)[:, : scores.shape[1]]
        done = ~alive | self._tables.is_complete(self._states.clamp(min=0))
        mask[done] = False
        mask[done, self.eos_token_id] = True
        return scores.masked_fill(~mask, float("-inf"))


@contextlib.contextmanager
def constrained_generate(model: Any, tree: PrefixTree, eos_token_id: int) -> Iterator[None]:
    """Within the block, ``model.generate`` adds a fresh :class:`TreeLogitsProcessor` to every call."""
    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        from transformers import LogitsProcessorList

        prompt = kwargs.get("input_ids", args[0] if args else None)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(TreeLogitsProcessor(tree, prompt.shape[1], eos_token_id))
        return original(*args, logits_processor=processors, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate  # the instance attribute goes; the class's generate shows again


_TRAINER: type | None = None


def _constrained_trainer() -> type:
    """``ConstrainedGRPOTrainer``, built on first use so that importing this module needs no TRL."""
    global _TRAINER
    if _TRAINER is not None:
        return _TRAINER
    from trl import GRPOTrainer

    class ConstrainedGRPOTrainer(GRPOTrainer):
        """TRL's ``GRPOTrainer`` whose completions follow a prefix tree (``tree=task.tree``; None: free).

        Only generation changes: ``_generate_single_turn`` runs inside :func:`constrained_generate` on
        the unwrapped model. vLLM generation has no such hook here and is refused.
        """

        def __init__(self, *args: Any, tree: PrefixTree | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tree = tree
            if tree is not None and self.use_vllm:
                raise ValueError("ConstrainedGRPOTrainer constrains transformers generation, not vLLM")
            if tree is not None and self.max_completion_length < tree.max_depth:
                raise ValueError(f"max_completion_length={self.max_completion_length} is shorter than the "
                                 f"longest item ({tree.max_depth} tokens)")

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            if self.tree is None:
                return super()._generate_single_turn(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model)
            eos = int(self.processing_class.eos_token_id)
            with constrained_generate(model, self.tree, eos):
                return super()._generate_single_turn(*args, **kwargs)

    _TRAINER = ConstrainedGRPOTrainer
    return _TRAINER


def __getattr__(name: str) -> Any:
    if name == "ConstrainedGRPOTrainer":
        return _constrained_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ConstrainedGRPOTrainer is left out: a star import would need TRL (see __getattr__).
__all__ = ["TRL_VERSIONS", "RecGymReward", "TreeLogitsProcessor", "completion_states", "constrained_generate",
           "prompt_dataset"]
