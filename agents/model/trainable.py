"""Parameter-efficient training of an :class:`~agents.model.policy.LLMPolicy`: LoRA, a frozen trunk,
new-token rows.

:class:`PolicyAdapters` (mixed into ``LLMPolicy``) applies :mod:`agents.model.adapters` to the policy's
model and records the setting in ``adapter``, which :mod:`agents.model.persistence` saves and
restores with the policy. Rollouts and beam search fold LoRA into the weights while they run
(``_inference_merge``).
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from torch import nn

from agents.model.adapters import (
    AdapterConfig,
    add_new_rows,
    detach_trunk_input,
    drop_new_rows,
    inject_lora,
    lora_merged,
    lora_targets,
    merge_lora,
    parse_freeze,
    resolve_lora_targets,
    set_trainable,
)

_Policy = TypeVar("_Policy", bound="PolicyAdapters")


class PolicyAdapters:
    """LoRA adapters, a frozen trunk and new-token rows, mixed into :class:`~agents.model.policy.LLMPolicy`.

    Needs from the class it is mixed into: ``model``, ``base_vocab_size``, ``adapter`` (None: every
    weight trains) and ``merge_at_inference``.

    Example:
        >>> from agents.model.policy import LLMPolicy
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, device="cpu")
        >>> policy = policy.freeze("embeddings", embeddings="all")
        >>> trained = policy.trainable_parameters()
        >>> policy.adapter["freeze"], len(trained) < len(list(policy.model.parameters()))
        ('embeddings', True)
    """

    def add_lora(
        self: _Policy, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
        target_modules: str | list[str] = "all-linear", *, embeddings: str = "new", top: int | None = None,
        seed: int = 0,
    ) -> _Policy:
        """Inject LoRA adapters in place (``peft``) and freeze everything else; returns the policy.

        ``target_modules``: Linear layer names (``["q_proj", "v_proj"]``) or ``"all-linear"`` (every
        Linear of the decoder, never the output layer). ``embeddings``: ``"new"`` also trains the
        rows beyond the pretrained vocabulary (``base_vocab_size``), ``"all"`` the whole embedding
        and output matrices, ``"none"`` nothing more. ``top``: adapters in the top ``top`` blocks
        only, the blocks below running without autograd. A (from ``seed``) and B = 0 leave the
        model's output unchanged at first.

        Example:
            >>> from agents.model.policy import LLMPolicy
            >>> from recgym.envs import RecGenTask
            >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
            ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
            >>> policy = LLMPolicy.from_config("tiny", task.items, device="cpu").add_lora(r=4)
            >>> sorted({n.split(".")[-3] for n, p in policy.model.named_parameters() if p.requires_grad})
            ['lora_A', 'lora_B']
        """
        config = AdapterConfig(lora_r=r, lora_alpha=alpha, lora_dropout=dropout,
                               lora_targets=target_modules if isinstance(target_modules, str)
                               else ",".join(target_modules),
                               freeze=None if top is None else f"top:{top}", train_embeddings=embeddings)
        lora = {"r": r, "alpha": float(alpha), "dropout": float(dropout),
                "targets": lora_targets(target_modules)}
        self._install_adapters({"freeze": config.freeze, "embeddings": embeddings, "lora": lora}, seed=seed)
        return self

    def freeze(self: _Policy, trainable: str = "top:2", *, embeddings: str = "new") -> _Policy:
        """Train only part of the model; returns the policy.

        ``"top:K"``: the top K decoder blocks and the final norm (plus the output layer's rows per
        ``embeddings``); the input embeddings' output is detached, so the blocks below build no
        autograd graph (no saved activations, no backward through them). ``"embeddings"``: only
        token rows (``embeddings="new"``: those beyond the pretrained vocabulary, e.g. SID tokens,
        as MiniOneRec's ``--freeze_LLM``; ``"all"``: the whole matrices); gradients reach the
        input rows through the frozen blocks (activation gradients only).

        Example:
            >>> from agents.model.policy import LLMPolicy
            >>> from recgym.envs import RecGenTask
            >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
            ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
            >>> policy = LLMPolicy.from_config("tiny", task.items, device="cpu").freeze("top:1")
            >>> sorted({n.split(".")[1] for n, p in policy.model.named_parameters() if p.requires_grad})
            ['layers', 'norm']
        """
        AdapterConfig(freeze=trainable, train_embeddings=embeddings)
        self._install_adapters({"freeze": trainable, "embeddings": embeddings, "lora": None})
        return self

    def _install_adapters(self, record: dict[str, Any], *, seed: int = 0) -> None:
        """Build the adapters ``record`` describes (a new one, or one read back from a saved folder)."""
        if self.adapter is not None:
            raise ValueError(f"the policy already has adapters {self.adapter}: merge them first "
                             "(policy.merge_adapters()) to add others")
        kind, top = parse_freeze(record["freeze"]) if record.get("freeze") else (None, None)
        lora, embeddings = record.get("lora"), record["embeddings"]
        model = self.model
        vocab = model.get_input_embeddings().weight.shape[0]
        if kind == "embeddings" and embeddings == "new" and self.base_vocab_size >= vocab:
            raise ValueError(f"freeze('embeddings'): the model has no rows beyond its pretrained vocabulary "
                             f"(base_vocab_size={self.base_vocab_size}, {vocab} rows), so nothing would "
                             "train; use embeddings='all' to train the whole embedding and output matrices")
        modules = None
        if lora is not None:
            modules = record.get("modules") or resolve_lora_targets(model, lora["targets"], top)
            inject_lora(model, modules, lora["r"], lora["alpha"], lora["dropout"],
                        seed=record.get("seed", seed))
        elif top is not None:
            resolve_lora_targets(model, "all-linear", top)  # checks that the model has that many blocks
        rows = add_new_rows(model, self.base_vocab_size, inputs=kind != "top") if embeddings == "new" else []
        if kind == "top":
            detach_trunk_input(model)
        set_trainable(model, lora=lora is not None, top=top, embeddings=embeddings)
        self.adapter = {"freeze": record.get("freeze"), "embeddings": embeddings, "lora": lora,
                        "modules": modules, "seed": record.get("seed", seed),
                        "new_rows": int(rows[0].shape[0]) if rows else 0}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The model's parameters that train (``requires_grad``): what an optimizer should get.

        Example:
            >>> # optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
        """
        return [p for p in self.model.parameters() if p.requires_grad]

    def merged_adapters(self) -> Any:
        """A context manager: LoRA folded into the base weights within the block, restored exactly after.

        The adapters' extra matmuls are skipped, which speeds up inference (beam search merges by
        itself); nothing trains inside the block. Without LoRA it does nothing.

        Example:
            >>> # with policy.merged_adapters():
            >>> #     metrics = evaluate(policy, valid_task)
        """
        return lora_merged(self.model)

    def _inference_merge(self) -> Any:
        """:meth:`merged_adapters` where inference merges LoRA (``merge_at_inference``), else a no-op."""
        if self.adapter is None or not self.adapter.get("lora") or not self.merge_at_inference:
            return contextlib.nullcontext()
        return self.merged_adapters()

    def merge_adapters(self: _Policy) -> _Policy:
        """Fold LoRA and new-token rows into plain weights for good; every weight trains again.

        Example:
            >>> # policy.merge_adapters().save_pretrained("runs/x/merged")  # a plain Hugging Face model
        """
        merge_lora(self.model)
        drop_new_rows(self.model)  # also removes the frozen-trunk boundary
        self.model.requires_grad_(True)
        self.adapter = None
        return self


__all__ = ["PolicyAdapters"]
