"""An LLM policy over the catalogue's prefix tree: constrained sampling, beam search, teacher forcing.

The policy *is* the LLM: its distribution is the full-vocabulary softmax

    pi(a | x, y_<t) = exp(z_a / T) / sum_{b in V} exp(z_b / T),   z = W h   (W: output embedding)

and the prefix tree only constrains decoding (disallowed tokens get -inf). This is the objective of
D3 / BIGRec / ReRe / MiniOneRec and the RISER paper: SFT is cross-entropy over the whole vocabulary,
RL log-probs and ratios are full-vocabulary, and beams are scored with the full-vocabulary
log-softmax with disallowed tokens masked (no renormalisation, length penalty 0). Forced tokens then
carry probability < 1 and gradient, which RISER's certainty mask and KL-Cov act on.

``objective="constrained"`` is the documented switch to the renormalised distribution
pi_A(a) = exp(z_a) / sum_{b in A} exp(z_b) over the allowed tokens A, for training and scoring alike.

Sampling from the allowed set is the same draw under either objective (masking the full softmax and
renormalising give the same categorical), so rollouts use two savings everywhere:

* **sparse head**: logits are computed only for the union of the allowed tokens in the batch
  (``h @ W[U].T``), never for the whole vocabulary (151,936 rows for Qwen2);
* **shared prompt**: a group of n rollouts of one request runs the prompt once; its KV cache is
  expanded n ways (``DynamicCache.batch_repeat_interleave``) and the first token's distribution,
  which depends on the prompt only, is computed once per group;
* **shared-prefix KV cache** (:mod:`agents.kvcache`): decoding keeps each prompt's keys and
  values once and attends to them per prompt, and writes each new token into room allocated
  once instead of concatenating, i.e. copying, the cache at every step.

Teacher forcing (SFT, the RL update) runs rows in **length buckets** (:func:`length_buckets`,
``LLMPolicy.bucket_padding``): title prompts and titles differ in length by 3-5x, and padding is
then not computed.

The full vocabulary is needed only where log-probs are scored: the update's response positions
and each beam step's normaliser (:meth:`LLMPolicy.full_logsumexp`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn
from torch.nn import functional as F

from agents import fsdp
from agents.adapters import (
    ADAPTER_FILE,
    AdapterConfig,
    add_new_rows,
    detach_trunk_input,
    drop_new_rows,
    head_parts,
    inject_lora,
    load_state,
    lora_merged,
    lora_targets,
    merge_lora,
    parse_freeze,
    resolve_lora_targets,
    set_trainable,
    split_state,
)
from agents.configs import MODEL_PRESETS
from agents.kvcache import (
    cache_from_tensors,
    cache_tensors,
    reserved_cache,
    shared_prefix,
    shared_prefix_cache,
    supports_shared_prefix,
)
from recgym.data import Dataset, Examples
from recgym.envs.task import RecGenTask
from recgym.envs.vector import RecGenVectorEnv
from recgym.items import ItemTokenizer

PRESETS = MODEL_PRESETS  # Qwen2-architecture sizes for offline runs (agents.configs)
POLICY_CONFIG = "recgym_policy.json"
OBJECTIVES = ("full", "constrained")
KV_ROOM = 16  # spare KV positions of a decoding cache (LLMPolicy._decoding_cache)
BUCKET_PADDING = 0.1  # LLMPolicy.bucket_padding's default: at most 10% of a length bucket is padding


@dataclass
class Rollout:
    """A batch of finished episodes, ready for learners (tensors on the policy's device).

    Row i is slot i of the vector env; groups of ``group_size`` consecutive rows share a request.

    Attributes:
        prompt_ids: (R, P) left-padded prompts of the R distinct requests; ``prompt_mask`` (R, P).
        tokens: (B, T) generated tokens, right-padded with the pad token; ``mask`` (B, T) real ones.
        logprobs: (B, T) log-probs of the sampled tokens renormalised over the allowed tokens (the
            sampling distribution; learners recompute the objective's log-probs in the update).
        states: (B, T) tree node each token was generated from (-1 on padding).
        rewards, hits: (B,) from the env; ``terminal``: (B,) final tree node (-1 if invalid).
        rows, targets: (B,) request row in the split and target item.
        group_size: n.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    states: torch.Tensor
    rewards: torch.Tensor
    hits: torch.Tensor
    terminal: torch.Tensor
    rows: np.ndarray
    targets: np.ndarray
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class LLMPolicy(nn.Module):
    """A Hugging Face causal LM that writes catalogue items inside the prefix tree.

    Args:
        model: any ``AutoModelForCausalLM``-style model with ``.model`` (the decoder returning
            ``last_hidden_state``) and output embeddings.
        items: the env's item tokenization (tokenizer, representation, template).
        device, dtype: where and in which precision to run (default: CUDA in bf16 if available).
        objective: ``"full"`` (default: the LLM's full-vocabulary distribution, the papers') or
            ``"constrained"`` (renormalised over the allowed tokens); SFT, RL and beam scoring all
            follow it, and it is saved with the policy.
        base_vocab_size: rows of the pretrained vocabulary (default: every row of the model's
            embeddings); rows beyond it (e.g. SID tokens added to a pretrained tokenizer) are the
            "new" ones that :meth:`add_lora` / :meth:`freeze` can train alone.

    Parameter-efficient training (:mod:`agents.adapters`): :meth:`add_lora` injects LoRA
    adapters, :meth:`freeze` trains only the top blocks or the new token rows; both save and load
    with the policy, :meth:`merged_adapters` speeds up evaluation and :meth:`merge_adapters`
    makes a plain model again. ``adapter`` records the current setting (None: all weights train).

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0)
        >>> ranked, scores = policy.beam_search(*task.prompt_tokens(np.arange(2)), width=5)
        >>> ranked.shape
        (2, 5)
    """

    def __init__(
        self, model: nn.Module, items: ItemTokenizer, *, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None, objective: str = "full", base_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}: choose one of {OBJECTIVES}")
        self.objective = objective
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if dtype is None:
            bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = model.to(device=device, dtype=dtype)
        self.items = items
        self.tree = items.build_tree()
        self.tables = self.tree.torch_tables(device)
        head = model.get_output_embeddings()
        if head.weight.shape[0] < self.tree.vocab_size:
            raise ValueError(f"the model's output layer has {head.weight.shape[0]} rows, fewer than the "
                             f"tokenizer's {self.tree.vocab_size} tokens: resize its embeddings")
        if getattr(head, "bias", None) is not None:
            raise ValueError("output layers with a bias are not supported by the sparse head")
        rows = model.get_input_embeddings().weight.shape[0]
        self.base_vocab_size = rows if base_vocab_size is None else min(int(base_vocab_size), rows)
        self.adapter: dict[str, Any] | None = None  # LoRA / frozen-trunk setting (agents.adapters)
        # Rollouts and beam search fold LoRA into the weights while they run (1.1-1.2x faster on CPU;
        # the merged copies of the adapted weights cost their memory meanwhile): False turns it off.
        self.merge_at_inference = True
        # Teacher forcing runs rows in length buckets (:func:`length_buckets`) so that at most this
        # fraction of a bucket's tokens is padding; None pads the whole batch to its longest row.
        self.bucket_padding: float | None = BUCKET_PADDING
        # Rollouts and beam search keep each prompt's KV once and attend to it per prompt
        # (agents.kvcache) where the model allows; False decodes with a per-row copy of the prompt.
        self.shared_prefix = True

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, preset: str | dict[str, int], items: ItemTokenizer, *, seed: int = 0,
        max_position_embeddings: int = 2048, vocab_size: int | None = None, **kwargs: Any,
    ) -> LLMPolicy:
        """A freshly initialised Qwen2-architecture model of a named size over ``items``' vocabulary.

        ``vocab_size`` pads the embedding matrix beyond the tokenizer (e.g. 151,936 rows, as Qwen2)
        to measure what a full-vocabulary output layer costs.
        """
        from transformers import Qwen2Config, Qwen2ForCausalLM

        sizes = PRESETS[preset] if isinstance(preset, str) else dict(preset)
        config = Qwen2Config(
            vocab_size=max(vocab_size or 0, items.vocab_size),
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True, bos_token_id=items.eos_token_id, eos_token_id=items.eos_token_id,
            pad_token_id=items.pad_token_id, **sizes,
        )
        torch.manual_seed(seed)
        return cls(Qwen2ForCausalLM(config), items, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], items: ItemTokenizer | None = None, **kwargs: Any
    ) -> LLMPolicy:
        """Load a model from a local folder, a hub name or a named offline model (``smollm2-135m``).

        A folder written by :meth:`save_pretrained` also restores the tokenizer, representation,
        template and catalogue (so the env's tree is rebuilt); for any other model pass ``items``.
        Such a folder records its catalogue's fingerprint: ``items`` over another catalogue or
        representation is a :class:`~agents.runs.CatalogueMismatchError`, and a damaged folder an
        error naming the file.

        Example:
            >>> # policy = LLMPolicy.from_pretrained("runs/sft/best")
        """
        from transformers import AutoModelForCausalLM

        from agents.checkpoint import weights_file
        from agents.pretrained import resolve_model
        from agents.runs import CheckpointError
        from agents.saved import check_saved_folder

        path = resolve_model(os.fspath(path))  # a named offline model -> its converted folder
        path_ = Path(path)
        recorded = cls._read_policy_config(path_)
        if items is None and recorded is None:
            raise ValueError(
                f"{path}: no {POLICY_CONFIG}, so not a policy saved by recgym (a run's best/, sft/final/ "
                f"or checkpoint/); to start from a plain causal LM use --model {path} (in Python: "
                "LLMPolicy.from_pretrained(path, items=task.items))")
        if path_.is_dir():  # every file read below: there, whole, unchanged, weights fitting the config
            check_saved_folder(path_, recorded, items=items is None,
                               adapter=bool(recorded and recorded.get("adapter")))
        if items is None:
            catalogue = Dataset.load(path_ / "catalogue.npz").catalogue
            items = ItemTokenizer.load(path_, catalogue)
            cls._check_policy_catalogue(path_, recorded, items, own=True)
        elif recorded is not None:
            cls._check_policy_catalogue(path_, recorded, items, own=False)
        if recorded is not None and "objective" not in kwargs:
            # Folders saved before the objective was recorded were trained on the constrained one.
            kwargs["objective"] = recorded.get("objective", "constrained")
        try:
            model = AutoModelForCausalLM.from_pretrained(path)
        except Exception as err:
            if not path_.is_dir():
                raise
            raise CheckpointError(
                f"{weights_file(path_)}: the model cannot be read ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the folder is damaged or incomplete: "
                "save it again (rerun the run that wrote it, with --restart) or use another folder") from err
        kwargs.setdefault("base_vocab_size", (recorded or {}).get("base_vocab_size",
                                                                 model.get_input_embeddings().weight.shape[0]))
        if model.get_input_embeddings().weight.shape[0] < items.vocab_size:  # SID tokens added to it
            model.resize_token_embeddings(items.vocab_size)
        policy = cls(model, items, **kwargs)
        policy._restore_adapters(path_, recorded)  # LoRA / frozen trunk saved with the policy
        return policy

    def save_pretrained(
        self, path: str | os.PathLike[str], *, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Save model (safetensors), tokenizer, item config and catalogue; the last file marks completion.

        ``recgym_policy.json`` records the representation, the objective, the catalogue's
        fingerprint (:func:`agents.runs.catalogue_fingerprint`) and a SHA-256 of every other file
        written (:func:`agents.saved.saved_hashes`), checked when the policy is loaded.
        ``state_dict``: the weights to write instead of the model's own (a sharded model's full
        weights, gathered by :func:`agents.fsdp.full_state_dict`; not with adapters).

        Example:
            >>> # policy.save_pretrained("runs/x/best")
        """
        from agents.runs import catalogue_fingerprint
        from agents.saved import saved_hashes

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_model(path, state_dict)  # plain Hugging Face weights (+ adapter.safetensors with adapters)
        self.items.save(path)
        empty = Examples.empty(1)
        Dataset("catalogue", self.items.catalogue, empty, empty, empty).save(path / "catalogue.npz")
        tmp = path / (POLICY_CONFIG + ".tmp")
        tmp.write_text(json.dumps({
            "format": 1, "representation": self.items.representation, "objective": self.objective,
            "catalogue": catalogue_fingerprint(self.items.catalogue, self.items.representation),
            "base_vocab_size": self.base_vocab_size, "adapter": self.adapter,
            "sha256": saved_hashes(path, [ADAPTER_FILE] if self.adapter is not None else [])}))
        os.replace(tmp, path / POLICY_CONFIG)
        return path

    @staticmethod
    def _read_policy_config(folder: Path) -> dict[str, Any] | None:
        """``recgym_policy.json`` of a saved policy folder (None when absent); damage names the file."""
        saved = folder / POLICY_CONFIG
        if not saved.is_file():
            return None
        try:
            recorded = json.loads(saved.read_text())
            if not isinstance(recorded, dict) or "representation" not in recorded:
                raise ValueError("no representation recorded")
        except (OSError, ValueError) as err:
            raise ValueError(f"{saved} is damaged ({err}): save the policy again") from err
        return recorded

    @staticmethod
    def _check_policy_catalogue(
        folder: Path, recorded: dict[str, Any], items: ItemTokenizer, own: bool
    ) -> None:
        """The catalogue of ``items`` against the one ``folder``'s policy was trained on."""
        from agents.runs import CatalogueMismatchError, catalogue_fingerprint, catalogue_message

        if items.representation != recorded["representation"]:
            raise CatalogueMismatchError(
                f"{folder} writes items as {recorded['representation']!r}, not {items.representation!r}: "
                "a saved policy brings its own representation (leave --representation out), or train one for "
                f"{items.representation!r}")
        expected = recorded.get("catalogue")
        if expected is None:  # saved before the fingerprint was recorded: compare with its catalogue file
            if own:
                return
            expected = catalogue_fingerprint(Dataset.load(folder / "catalogue.npz").catalogue,
                                             recorded["representation"])
        given = catalogue_fingerprint(items.catalogue, items.representation)
        if given != expected:
            if own:
                raise CatalogueMismatchError(
                    f"{folder / 'catalogue.npz'} does not match the catalogue recorded in "
                    f"{folder / POLICY_CONFIG} (the folder was altered or damaged): save the policy again")
            raise CatalogueMismatchError(catalogue_message(str(folder), expected, given))

    # -- adapters: LoRA, frozen trunk, new-token rows (agents.adapters) ------------------------------

    def add_lora(
        self, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
        target_modules: str | list[str] = "all-linear", *, embeddings: str = "new", top: int | None = None,
        seed: int = 0,
    ) -> LLMPolicy:
        """Inject LoRA adapters in place (``peft``) and freeze everything else; returns the policy.

        ``target_modules``: Linear layer names (``["q_proj", "v_proj"]``) or ``"all-linear"`` (every
        Linear of the decoder, never the output layer). ``embeddings``: ``"new"`` also trains the
        rows beyond the pretrained vocabulary (``base_vocab_size``), ``"all"`` the whole embedding
        and output matrices, ``"none"`` nothing more. ``top``: adapters in the top ``top`` blocks
        only, the blocks below running without autograd. A (from ``seed``) and B = 0 leave the
        model's output unchanged at first.

        Example:
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

    def freeze(self, trainable: str = "top:2", *, embeddings: str = "new") -> LLMPolicy:
        """Train only part of the model; returns the policy.

        ``"top:K"``: the top K decoder blocks and the final norm (plus the output layer's rows per
        ``embeddings``); the input embeddings' output is detached, so the blocks below build no
        autograd graph (no saved activations, no backward through them). ``"embeddings"``: only
        token rows (``embeddings="new"``: those beyond the pretrained vocabulary, e.g. SID tokens,
        as MiniOneRec's ``--freeze_LLM``; ``"all"``: the whole matrices); gradients reach the
        input rows through the frozen blocks (activation gradients only).

        Example:
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

    def merge_adapters(self) -> LLMPolicy:
        """Fold LoRA and new-token rows into plain weights for good; every weight trains again.

        Example:
            >>> # policy.merge_adapters().save_pretrained("runs/x/merged")  # a plain Hugging Face model
        """
        merge_lora(self.model)
        drop_new_rows(self.model)  # also removes the frozen-trunk boundary
        self.model.requires_grad_(True)
        self.adapter = None
        return self

    def load_weights(self, folder: str | os.PathLike[str], *, remedy: str | None = None) -> None:
        """Copy the weights :meth:`save_pretrained` wrote in ``folder`` into this policy, adapters included.

        The folder's adapters must be this policy's (same LoRA layers, same new-token rows). Its
        config and weights files are checked first (:mod:`agents.saved`): a missing, damaged or
        changed file, or a config of another model, is a :class:`~agents.runs.CheckpointError`
        naming the file, with ``remedy`` as the way out.

        Example:
            >>> # policy.load_weights("runs/x/checkpoint")  # exact resume
        """
        from safetensors.torch import load_file

        from agents.saved import SAVE_AGAIN, check_config_fits_model, check_saved_folder

        folder = Path(folder)
        recorded = self._read_policy_config(folder) or {}
        saved = recorded.get("adapter")
        mine = self.adapter
        shape = ("lora", "modules", "new_rows")
        if (saved is None) != (mine is None) or (saved and {k: saved.get(k) for k in shape}
                                                 != {k: mine.get(k) for k in shape}):
            raise ValueError(f"{folder}: saved with adapters {saved}, but this policy has {mine}: load it "
                             "with LLMPolicy.from_pretrained, or give the policy the same adapters first")
        check_saved_folder(folder, recorded or None, items=False, adapter=mine is not None,
                           remedy=remedy or SAVE_AGAIN)
        check_config_fits_model(folder, self.model, remedy or SAVE_AGAIN)
        fresh = type(self.model).from_pretrained(folder)
        if mine is None:
            self.model.load_state_dict(fresh.state_dict())
            return
        load_state(self.model, fresh.state_dict(), load_file(folder / ADAPTER_FILE), str(folder))

    def _save_model(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The model's weights into ``path``: plain Hugging Face files, plus ``adapter.safetensors``."""
        if self.adapter is None:
            self.model.save_pretrained(path, state_dict=state_dict)
            return
        if state_dict is not None:
            raise ValueError("save_pretrained(state_dict=...) is not supported for a policy with adapters")
        from safetensors.torch import save_file

        base, adapter = split_state(self.model)
        self.model.save_pretrained(path, state_dict=base)
        tmp = path / (ADAPTER_FILE + ".tmp")
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp))
        os.replace(tmp, path / ADAPTER_FILE)

    def _restore_adapters(self, folder: Path, recorded: dict[str, Any] | None) -> None:
        """Rebuild the adapters recorded in ``folder`` and load their tensors (after the base weights)."""
        if not recorded or not recorded.get("adapter"):
            return
        from safetensors.torch import load_file

        from agents.runs import CheckpointError

        self._install_adapters(recorded["adapter"])
        try:
            tensors = load_file(folder / ADAPTER_FILE)
        except Exception as err:
            raise CheckpointError(f"{folder / ADAPTER_FILE}: the adapter weights cannot be read "
                                  f"({type(err).__name__}: {err}); save the policy again") from err
        load_state(self.model, None, tensors, str(folder))

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    @property
    def head_weight(self) -> torch.Tensor:
        """The output layer's weight (V, H); rows trained as new-token rows are in :meth:`head_rows`."""
        return self.model.get_output_embeddings().weight

    def head_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of the output layer as the model uses them (trainable new-token rows included).

        Example:
            >>> # w = policy.head_rows(torch.tensor([0, 5]))  # (2, hidden)
        """
        w, rows = head_parts(self.model)
        if rows is None:
            return w[index]
        first = w.shape[0] - rows.shape[0]
        new = rows.to(w.dtype)[(index - first).clamp(min=0)]
        return torch.where((index >= first)[:, None], new, w[index])

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary, ``hidden`` (N, H) -> (N, V), at least float32.

        Example:
            >>> # logits = policy.full_logits(hidden[:, -1])
        """
        w, rows = head_parts(self.model)
        h = hidden.to(w.dtype)
        if rows is None:
            return _at_least_float32(h @ w.T)
        first = w.shape[0] - rows.shape[0]
        return _at_least_float32(torch.cat([h @ w[:first].T, h @ rows.to(w.dtype).T], dim=-1))

    @property
    def full_vocab(self) -> bool:
        """Whether log-probs are normalised over the whole vocabulary (``objective == "full"``)."""
        return self.objective == "full"

    def full_logsumexp(
        self, hidden: torch.Tensor, temperature: float = 1.0, chunk: int = 256
    ) -> torch.Tensor:
        """log sum_{b in V} exp(z_b / T) per row of ``hidden`` (N, H): the full softmax's normaliser.

        Rows go through the output layer ``chunk`` at a time, so an N x V logit matrix never exists.
        """
        out = [torch.logsumexp(self.full_logits(h) / temperature, dim=-1) for h in hidden.split(chunk)]
        return torch.cat(out) if out else hidden.new_zeros(0)

    # -- model pieces ----------------------------------------------------------------------------

    def left_pad(self, prompt_ids: Any, prompt_len: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded env prompts -> left-padded (ids, attention mask) trimmed to the longest."""
        ids = torch.as_tensor(np.asarray(prompt_ids), device=self.device)
        lens = torch.as_tensor(np.asarray(prompt_len), device=self.device)
        width = int(lens.max())
        shift = torch.arange(width, device=self.device) - (width - lens)[:, None]
        mask = shift >= 0
        left = ids.gather(1, shift.clamp(min=0)).masked_fill(~mask, self.items.pad_token_id)
        return left, mask.long()

    @contextlib.contextmanager
    def _decoding_cache(self) -> Any:
        """An empty KV cache for one rollout or beam batch: the shared-prefix cache (and attention)
        where ``shared_prefix`` is on and the model allows it, else the reserved cache."""
        # Spare KV positions: dropping or reordering rows copies the room along, so it stays small;
        # past it a cache grows by the same room.
        room = min(self.tree.max_depth, KV_ROOM)
        if self.shared_prefix and supports_shared_prefix(self.model):
            cache = shared_prefix_cache(room)
            with shared_prefix(self.model, cache):
                yield cache
        else:
            yield reserved_cache(room)

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None, *,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Decoder hidden states for ``input_ids`` given the full ``attention_mask`` (cache + new).

        Position ids count real tokens only, so left padding does not shift them.
        """
        positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        trunk = self.model.model
        out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    use_cache=use_cache, **{_cache_keyword(type(trunk)): cache})
        return out.last_hidden_state, (out["cache"] if "cache" in out else out.past_key_values)

    def allowed_logits(
        self, hidden: torch.Tensor, states: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse head: logits of the allowed tokens only, padded to ``(tokens [N, K], logits [N, K])``.

        Logits are ``h @ W[U].T`` for the union U of allowed tokens in the batch, gathered per row;
        padding has token -1 and logit -inf. Rows must be states that are not complete.
        """
        tokens, valid = self.tables.allowed_padded(states)
        union, inverse = torch.unique(tokens[valid], return_inverse=True)
        dense = hidden.to(self.head_weight.dtype) @ self.head_rows(union).T  # (N, |U|)
        col = torch.zeros_like(tokens)
        col[valid] = inverse
        logits = _at_least_float32(dense.gather(1, col)) / temperature
        return tokens, logits.masked_fill(~valid, float("-inf"))

    # -- rollouts --------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(
        self,
        envs: RecGenVectorEnv,
        *,
        group_size: int = 1,
        rows: np.ndarray | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Rollout:
        """Sample one item per slot by driving ``envs`` (autoreset ``"disabled"``) through its API.

        ``reset(options={"group_size": n, "rows": rows})`` -> one prefill per distinct request ->
        constrained sampling step by step (``envs.step``) until every slot's episode has ended.
        ``top_k`` is off unless asked (never inherited from a generation config).
        """
        if envs.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError("rollout needs a vector env with autoreset_mode='disabled'")
        if envs.task.items is not self.items and envs.task.tree.num_nodes != self.tree.num_nodes:
            raise ValueError("the env and the policy use different item tokenizations")
        options: dict[str, Any] = {"group_size": group_size}
        if rows is not None:
            options["rows"] = rows
        with self._inference_merge(), self._decoding_cache() as cache:
            return self._rollout(envs, options, group_size, temperature, top_k, generator, seed, cache)

    def _rollout(
        self, envs: RecGenVectorEnv, options: dict[str, Any], group_size: int, temperature: float,
        top_k: int | None, generator: torch.Generator | None, seed: int | None, cache: Any,
    ) -> Rollout:
        obs, info = envs.reset(seed=seed, options=options)
        n, b = group_size, envs.num_envs
        prompt_ids, prompt_mask = self.left_pad(obs["prompt_ids"][::n], obs["prompt_len"][::n])
        hidden, cache = self._forward(prompt_ids, prompt_mask, cache)
        # First token: its distribution depends on the prompt only -> computed once per group.
        root = torch.zeros(len(prompt_ids), dtype=torch.long, device=self.device)
        tokens0, logits0 = self.allowed_logits(hidden[:, -1], root, temperature)
        cache.batch_repeat_interleave(n)
        attn = prompt_mask.repeat_interleave(n, dim=0)
        cand, logits = tokens0.repeat_interleave(n, dim=0), logits0.repeat_interleave(n, dim=0)

        depth = self.tree.max_depth
        out_tokens = torch.full((b, depth), self.items.pad_token_id, dtype=torch.long, device=self.device)
        out_logp = torch.zeros(b, depth, device=self.device)
        out_states = torch.full((b, depth), -1, dtype=torch.long, device=self.device)
        states = torch.zeros(b, dtype=torch.long, device=self.device)
        alive = torch.arange(b, device=self.device)  # slots still generating (rows of the cache)
        rewards = np.zeros(b)
        for t in range(depth):
            logp = torch.log_softmax(_top_k(logits, top_k), dim=-1)
            pick = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            token = cand.gather(1, pick[:, None]).squeeze(1)
            out_tokens[alive, t] = token
            out_logp[alive, t] = logp.gather(1, pick[:, None]).squeeze(1).float()
            out_states[alive, t] = states[alive]
            states[alive] = self.tables.step(states[alive], token)
            actions = np.zeros(b, dtype=np.int64)
            actions[alive.cpu().numpy()] = token.cpu().numpy()
            _, r, terminated, _, info = envs.step(actions)
            rewards += r
            still = ~torch.as_tensor(terminated, device=self.device)[alive]
            if not bool(still.any()):
                break
            keep = torch.nonzero(still).squeeze(1)
            if len(keep) < len(alive):  # drop finished rows from the cache: compute stays proportional
                cache.batch_select_indices(keep)
                attn, alive, token = attn[keep], alive[keep], token[keep]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            hidden, cache = self._forward(token[:, None], attn, cache)
            cand, logits = self.allowed_logits(hidden[:, -1], states[alive], temperature)
        mask = out_states >= 0
        length = int(mask.sum(dim=1).max())
        terminal = torch.where(self.tables.is_complete(states), states, torch.full_like(states, -1))
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=out_tokens[:, :length],
            mask=mask[:, :length], logprobs=out_logp[:, :length], states=out_states[:, :length],
            rewards=torch.as_tensor(rewards, dtype=torch.float32, device=self.device),
            hits=torch.as_tensor(info["hit"], device=self.device), terminal=terminal,
            rows=info["row"].copy(), targets=info["target"].copy(), group_size=n,
        )

    # -- beam search -----------------------------------------------------------------------------

    @torch.no_grad()
    def beam_search(
        self, prompt_ids: Any, prompt_len: Any, *, width: int = 50, k: int | None = None,
        length_normalize: bool = False, batch_size: int | None = None, scoring: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Constrained beam search: the top-``k`` distinct items (terminal nodes) per prompt.

        Scores are summed log-probs (divided by the length with ``length_normalize``; the papers use
        no length penalty). ``scoring="full"`` (the default under the full objective) scores each
        token with the full-vocabulary log-softmax, disallowed tokens masked and nothing
        renormalised, as D3 / ReRe / MiniOneRec evaluate; ``"constrained"`` renormalises over the
        allowed tokens.
        Every terminal is a distinct token sequence, i.e. a distinct title / SID (which may denote
        several items: ``self.tree.items(node)``). Beams are pruned exactly: search stops once no
        unfinished beam can beat the k-th finished one (log-probs only decrease).

        Returns:
            ``(terminals [R, k], scores [R, k])`` as numpy arrays, best first; -1 / -inf where fewer
            than k items were found.
        """
        k = k or width
        if k > width:
            raise ValueError(f"k={k} needs a beam width of at least k, got width={width}")
        scoring = scoring or self.objective
        if scoring not in OBJECTIVES:
            raise ValueError(f"scoring={scoring!r}: choose one of {OBJECTIVES}")
        prompt_ids, prompt_len = np.asarray(prompt_ids), np.asarray(prompt_len)
        step = batch_size or len(prompt_ids)
        parts = []
        with self._inference_merge():
            for i in range(0, len(prompt_ids), step):
                with self._decoding_cache() as cache:
                    parts.append(self._beam_batch(prompt_ids[i:i + step], prompt_len[i:i + step], width, k,
                                                  length_normalize, scoring == "full", cache))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _beam_batch(
        self, prompt_ids: np.ndarray, prompt_len: np.ndarray, w: int, k: int, normalize: bool, full: bool,
        cache: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        r, dev, ninf = len(prompt_ids), self.device, float("-inf")
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        hidden, cache = self._forward(ids, attn, cache)
        h = hidden[:, -1]  # (L, H): the live beams only, in the order of ``live`` below
        # Beams: (R, W) states and scores; start with one live beam per request at the root.
        states = torch.zeros(r, 1, dtype=torch.long, device=dev)
        scores = torch.zeros(r, 1, device=dev)
        lengths = torch.zeros(r, 1, device=dev)
        fin_states = torch.full((r, k), -1, dtype=torch.long, device=dev)
        fin_scores = torch.full((r, k), ninf, device=dev)
        beams = 1
        live = torch.arange(r, device=dev)  # flat (request * beams + beam) indices of the live beams
        for _ in range(self.tree.max_depth):
            # Only live beams go through the head and the model (and hold cache rows): a finished or
            # pruned beam costs nothing, which matters when item lengths differ (titles).
            tokens_live, logits_live = self.allowed_logits(h, states.reshape(-1)[live])
            # Full scoring: log-softmax over the whole vocabulary, then the mask (no renormalising).
            norm = self.full_logsumexp(h) if full else torch.logsumexp(logits_live, dim=-1)
            width_k = tokens_live.shape[1]
            tokens = torch.full((r * beams, width_k), -1, dtype=torch.long, device=dev)
            logp = torch.full((r * beams, width_k), ninf, device=dev)
            tokens[live], logp[live] = tokens_live, (logits_live - norm[:, None]).float()
            cand_scores = scores[..., None] + logp.reshape(r, beams, width_k)  # (R, beams, K); dead: -inf
            top_scores, top_idx = cand_scores.reshape(r, -1).topk(min(w, beams * width_k), dim=1)
            parent = top_idx // width_k
            token = tokens.reshape(r, -1).gather(1, top_idx)
            parent_states = states.gather(1, parent).reshape(-1)
            new_states = self.tables.step(parent_states, token.reshape(-1).clamp(min=0)).reshape(r, -1)
            new_len = lengths.gather(1, parent) + 1
            valid = torch.isfinite(top_scores)
            done = valid & self.tables.is_complete(new_states.clamp(min=0))
            # Move complete hypotheses into the finished pool (best k per request).
            ranked = top_scores / new_len if normalize else top_scores
            pool_scores = torch.cat([fin_scores, ranked.masked_fill(~done, ninf)], dim=1)
            pool_states = torch.cat([fin_states, new_states.masked_fill(~done, -1)], dim=1)
            fin_scores, best = pool_scores.topk(k, dim=1)
            fin_states = pool_states.gather(1, best)
            scores = top_scores.masked_fill(done | ~valid, ninf)
            states, lengths = new_states.clamp(min=0), new_len
            still = torch.isfinite(scores)
            if not bool(still.any()):
                break
            if not normalize:  # exact stop: no live beam can beat the k-th finished item any more
                bound = scores.max(dim=1).values
                if bool((bound <= fin_scores[:, -1]).all()):
                    break
            # Keep the cache rows of the live beams' parents (a live beam's parent was live) and feed
            # the live beams' tokens.
            prev_beams, beams = beams, scores.shape[1]
            row_of = torch.full((r * prev_beams,), -1, dtype=torch.long, device=dev)
            row_of[live] = torch.arange(len(live), device=dev)
            live = torch.nonzero(still.reshape(-1)).squeeze(1)
            parent_flat = (torch.arange(r, device=dev)[:, None] * prev_beams + parent).reshape(-1)
            rows = row_of[parent_flat[live]]
            cache.reorder_cache(rows)
            attn = torch.cat([attn[rows], torch.ones_like(attn[rows][:, :1])], dim=1)
            hidden, cache = self._forward(token.reshape(-1)[live, None], attn, cache)
            h = hidden[:, -1]
        return fin_states.cpu().numpy(), fin_scores.float().cpu().numpy()

    # -- teacher forcing -------------------------------------------------------------------------

    def sequence_logprobs(
        self, prompt_ids: Any, prompt_len: Any, responses: torch.Tensor | np.ndarray,
        temperature: float = 1.0, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of given responses under the policy's objective, batched (gradients flow).

        ``responses`` (B, T) are token sequences from the root, right-padded with -1.
        One forward over ``[left-padded prompt; response]`` per row (in length buckets, see
        ``bucket_padding``): the straightforward way.
        :meth:`group_logprobs` gives the same numbers with one prompt forward per request.
        ``full_vocab`` overrides the objective (True: whole vocabulary, as TRL / ReRe train; False:
        renormalised over the allowed tokens; None: the policy's ``objective``).

        Returns:
            ``(logprobs [B, T], entropies [B, T], mask [B, T])``; zeros on padding.
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        resp, states, mask = self._responses(responses)
        ids, attn = self.left_pad(prompt_ids, prompt_len)
        p, plen, rlen = ids.shape[1], attn.sum(dim=1), mask.sum(dim=1)
        # Rows run in buckets of similar length (prompt + response), each trimmed to its longest
        # prompt and response: padding is not computed.
        buckets, parts = self._buckets(plen + rlen), []
        for rows in buckets:
            pb, tb = int(plen[rows].max()), int(rlen[rows].max())
            full_ids = torch.cat([ids[rows, p - pb:], resp[rows, :tb].clamp(min=0)], dim=1)
            full_attn = torch.cat([attn[rows, p - pb:], mask[rows, :tb].long()], dim=1)
            hidden, _ = self._forward(full_ids, full_attn, use_cache=False)
            # The hidden state before token t predicts token t: positions pb-1 .. pb+tb-2.
            parts.append(hidden[:, pb - 1: pb - 1 + tb])
        h = _in_order(parts, buckets, resp.shape[1])
        return self._scatter_token_logprobs(h, states, resp, mask, temperature, full_vocab)

    def stream_logprobs(
        self, token_ids: Any, lengths: Any, states: Any, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the tokens of whole right-padded rows, each row one causal forward.

        ``token_ids`` (B, T) hold rows of ``lengths`` real tokens; ``states`` (B, T) is the prefix
        tree state *before* each token that is scored (the state the model writes it from) and -1 at
        every token that is not (context, padding, the first token). Token t is scored from the
        hidden state at t - 1. This is how a user's whole item sequence teaches every item in one
        forward (:mod:`agents.sft`, sequence level): items written back to back under a compact
        prompt, each scored as the response of the history before it. Rows run in length buckets.

        Returns:
            ``(logprobs [B, T], mask [B, T])``: the scored tokens' log-probs, zeros elsewhere.

        Example:
            >>> # logp, mask = policy.stream_logprobs(ids, lengths, states)
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        ids = _as_long(token_ids, self.device)
        lens = _as_long(lengths, self.device)
        states = _as_long(states, self.device)
        buckets, parts = self._buckets(lens), []
        for rows in buckets:
            tb = int(lens[rows].max())
            attn = (torch.arange(tb, device=self.device) < lens[rows, None]).long()
            hidden, _ = self._forward(ids[rows, :tb], attn, use_cache=False)
            parts.append(hidden[:, :tb - 1])  # h[:, t - 1] predicts token t
        h = _in_order(parts, buckets, ids.shape[1] - 1)
        mask = states[:, 1:] >= 0
        logp, _, _ = self._scatter_token_logprobs(h, states[:, 1:].clamp(min=0), ids[:, 1:], mask, 1.0,
                                                  full_vocab)
        pad = logp.new_zeros(len(logp), 1)
        return torch.cat([pad, logp], dim=1), torch.cat([mask.new_zeros(len(mask), 1), mask], dim=1)

    def group_logprobs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor | np.ndarray,
        prompt_index: torch.Tensor | np.ndarray, temperature: float = 1.0, *, full_vocab: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sequence_logprobs` with a **shared prompt**: one prompt forward per request.

        ``prompt_ids``/``prompt_mask`` (R, P) are left-padded prompts (as in :class:`Rollout`);
        response row b belongs to prompt ``prompt_index[b]``. Each prompt runs once, its KV cache
        is expanded to its responses by an index (gradients flow back through the expansion), and
        the first token's distribution, which depends on the prompt alone, is computed once per
        prompt. Only the responses run per row; logits are computed for allowed tokens only.
        Prompts, then responses, run in length buckets (``bucket_padding``), so padding to the
        batch's longest prompt or title is not computed.

        Example:
            >>> # logp, ent, mask = policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses,
            >>> #                                         np.repeat(np.arange(R), n))
        """
        full_vocab = self.full_vocab if full_vocab is None else full_vocab
        resp, states, mask = self._responses(responses)
        index = _as_long(prompt_index, self.device)
        p, plen = prompt_ids.shape[1], prompt_mask.sum(dim=1)
        # Prompts run in buckets of similar length, each trimmed to its longest; their KV is
        # left-padded back to P columns (masked) and put in request order.
        buckets, last, kv = self._buckets(plen), [], []
        for rows in buckets:
            pb = int(plen[rows].max())
            hidden, cache = self._forward(prompt_ids[rows, p - pb:], prompt_mask[rows, p - pb:])
            last.append(hidden[:, -1])
            kv.append([F.pad(x, (0, 0, p - pb, 0)) for x in cache_tensors(cache)])
        h_last = _in_order(last, buckets)
        kv_all = [_in_order(list(layer), buckets) for layer in zip(*kv)]  # keys, values per layer
        # Token 0: its distribution depends on the prompt alone (every row starts at the root), so
        # it is computed once per prompt (R rows, not B) and gathered for each response.
        root = torch.zeros(len(h_last), dtype=torch.long, device=self.device)
        logp0_all, ent0 = self._token_logprobs(h_last, root, None, temperature, full_vocab)
        first = resp[:, 0].clamp(min=0)
        col0 = first if full_vocab else _column_of(self.tables.allowed_padded(root[:1])[0], first)
        logp0 = torch.where(mask[:, 0], logp0_all[index, col0], 0.0)[:, None]
        ent0 = torch.where(mask[:, 0], ent0[index], 0.0)[:, None]
        if resp.shape[1] == 1:
            return logp0, ent0, mask
        # Tokens 1..T-1, in buckets of responses of similar length: each response row gets its
        # prompt's KV by an index (gradients flow back into the shared prompt), trimmed to the
        # bucket's longest prompt; then only the responses run.
        rlen = mask.sum(dim=1)
        buckets, parts = self._buckets(rlen), []
        for rows in buckets:
            tb, pb = int(rlen[rows].max()), int(plen[index[rows]].max())
            if tb < 2:  # one-token responses: token 0 is all they have
                parts.append(h_last.new_zeros(len(rows), 0, h_last.shape[-1]))
                continue
            cache = cache_from_tensors([x[index[rows], :, p - pb:] for x in kv_all], self.model.config)
            attn = torch.cat([prompt_mask[index[rows], p - pb:], mask[rows, :tb - 1].long()], dim=1)
            h, _ = self._forward(resp[rows, :tb - 1].clamp(min=0), attn, cache)  # h[:, t-1] predicts t
            parts.append(h)
        h = _in_order(parts, buckets, resp.shape[1] - 1)
        logp, ent, _ = self._scatter_token_logprobs(
            h, states[:, 1:], resp[:, 1:], mask[:, 1:], temperature, full_vocab)
        return torch.cat([logp0, logp], dim=1), torch.cat([ent0, ent], dim=1), mask

    def _buckets(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Row indices in length buckets (:func:`length_buckets` with ``self.bucket_padding``).

        One padded batch while forwards are FSDP collectives: ranks would run different numbers of
        buckets, and every rank must run as many forwards as the others.
        """
        padding = None if fsdp.forwards_are_collective(self.model) else self.bucket_padding
        return [torch.as_tensor(rows, device=self.device)
                for rows in length_buckets(lengths.cpu().numpy(), padding)]

    def _responses(self, responses: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responses as a device tensor, their tree states (-1 on padding) and mask."""
        resp = _as_long(responses, self.device)
        states = torch.as_tensor(self.tree.path_states(resp.cpu().numpy()), device=self.device)
        return resp, states, states >= 0

    def _token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor | None, temperature: float,
        full_vocab: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position: log-prob of ``tokens`` (or all allowed ones when None) and the entropy.

        Constrained: the sparse head over the allowed tokens of ``states``; ``full_vocab``: the
        whole output layer.
        """
        if full_vocab:
            logits = self.full_logits(h) / temperature
            logp_all = torch.log_softmax(logits, dim=-1)
            ent = -(logp_all.exp() * logp_all).sum(dim=1)
            return (logp_all if tokens is None else logp_all.gather(1, tokens[:, None]).squeeze(1)), ent
        allowed, logits = self.allowed_logits(h, states, temperature)
        logp_all = torch.log_softmax(logits, dim=-1)
        ent = -(logp_all.exp() * logp_all.masked_fill(~torch.isfinite(logp_all), 0)).sum(dim=1)
        if tokens is None:
            return logp_all, ent
        return logp_all.gather(1, _column_of(allowed, tokens)[:, None]).squeeze(1), ent

    def _scatter_token_logprobs(
        self, h: torch.Tensor, states: torch.Tensor, resp: torch.Tensor, mask: torch.Tensor,
        temperature: float, full_vocab: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs / entropies of ``resp`` (hidden states ``h`` (B, T, H)) at ``mask``, zeros elsewhere."""
        logp_m, ent_m = self._token_logprobs(h[mask], states[mask], resp[mask], temperature, full_vocab)
        logp = torch.zeros(mask.shape, device=self.device, dtype=logp_m.dtype)
        ent = torch.zeros_like(logp)
        logp[mask] = logp_m
        ent[mask] = ent_m
        return logp, ent, mask

    def item_responses(self, item_ids: Any) -> np.ndarray:
        """Token sequences of items, right-padded with -1: the responses for teacher forcing."""
        seqs = [self.items.sequences[int(i)] for i in np.asarray(item_ids).tolist()]
        width = max(len(s) for s in seqs)
        out = np.full((len(seqs), width), -1, dtype=np.int64)
        for i, s in enumerate(seqs):  # per item (not a hot path): building padded targets
            out[i, : len(s)] = s
        return out


def length_buckets(lengths: Any, max_padding: float | None) -> list[np.ndarray]:
    """Row indices grouped so that padding each group to its longest row wastes at most
    ``max_padding`` of the group's tokens: longest rows first, greedily; None is one group.

    Running a batch bucket by bucket computes (nearly) only real tokens where lengths differ
    (title prompts and titles do: 124-429 and 10-51 tokens on office-d3).

    Example:
        >>> [b.tolist() for b in length_buckets([10, 3, 9, 4], 0.25)]  # [10, 9, 4]: 7 of 30 pads
        [[0, 2, 3], [1]]
        >>> [b.tolist() for b in length_buckets([10, 3, 9, 4], None)]
        [[0, 1, 2, 3]]
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if max_padding is None:
        return [np.arange(n)]
    if not 0 <= max_padding < 1:
        raise ValueError(f"max_padding={max_padding}: a fraction in [0, 1)")
    order = np.argsort(-lengths, kind="stable")
    longest_first = lengths[order]
    total = np.concatenate([[0], np.cumsum(longest_first)])
    out, start = [], 0
    while start < n:  # one iteration per bucket
        count = np.arange(1, n - start + 1)
        real = total[start + 1:] - total[start]
        # real tokens >= (1 - max_padding) * padded tokens; true for a prefix only (lengths fall)
        fits = real >= (1 - max_padding) * count * longest_first[start]
        end = start + (n - start if fits.all() else int(np.argmin(fits)))
        out.append(np.sort(order[start:end]))  # rows in order within a bucket: one bucket is arange(n)
        start = end
    return out


def _in_order(parts: list[torch.Tensor], buckets: list[torch.Tensor], width: int | None = None,
              ) -> torch.Tensor:
    """Per-bucket outputs (rows of ``buckets[i]``) back in row order, dim 1 right-padded to ``width``."""
    if width is not None:
        parts = [F.pad(x, (0, 0, 0, width - x.shape[1])) for x in parts]
    if len(parts) == 1:  # one bucket holds every row, in order (length_buckets)
        return parts[0]
    return torch.cat(parts)[torch.argsort(torch.cat(buckets))]


@functools.cache
def _cache_keyword(trunk_class: type) -> str:
    """The KV cache's argument name: ``cache`` since transformers 5.x (``past_key_values`` deprecated
    there), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(trunk_class.forward).parameters else "past_key_values"


def _as_long(values: Any, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device`` from a tensor, array or list."""
    return torch.as_tensor(values if torch.is_tensor(values) else np.asarray(values), device=device).long()


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go to float32 for the softmax; float64 (gradient checks) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _column_of(allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Column of each token in its row of padded allowed tokens (``allowed`` (N, K), or (1, K) shared)."""
    return (allowed == tokens[:, None]).float().argmax(dim=1)


def _top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def make_rollout_env(task: RecGenTask, num_envs: int, env_id: str = "RecGen-v0") -> RecGenVectorEnv:
    """The vector env learners drive: ``gym.make_vec`` of ``env_id`` through its ``vector_entry_point``.

    Disabled autoreset and no dense masks (policies build masks from the tree). ``task`` already
    holds the data, so the spec's own data keywords are dropped; a registered variant with its own
    vector class gets that class.

    Example:
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> type(make_rollout_env(task, 4)).__name__
        'RecGenVectorEnv'
    """
    import dataclasses

    import gymnasium as gym

    import recgym  # noqa: F401  (registers the ids)

    spec = dataclasses.replace(gym.spec(env_id), kwargs={})
    if spec.vector_entry_point is None:
        raise ValueError(f"env {env_id!r} has no vector_entry_point: register one to train on it")
    return gym.make_vec(spec, num_envs=num_envs, vectorization_mode="vector_entry_point", task=task,
                        autoreset_mode="disabled", dense_masks=False)


__all__ = ["PRESETS", "LLMPolicy", "Rollout", "make_rollout_env"]
