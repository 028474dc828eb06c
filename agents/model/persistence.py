"""Persistence of an :class:`~agents.model.policy.LLMPolicy`: a saved policy folder, written and read back.

:class:`PolicyPersistence` (mixed into ``LLMPolicy``) writes a folder any Hugging Face loader reads
(the model's weights, plus ``adapter.safetensors`` with adapters), with the tokenizer, item config
and catalogue, and :data:`POLICY_CONFIG` last: it records the representation, the objective, the
catalogue's fingerprint, the adapters and a SHA-256 of every other file, all checked on loading
(:mod:`agents.training.saved`), so a damaged folder or one of another catalogue is an error naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from agents.model.adapters import ADAPTER_FILE, load_state, split_state
from recgym.data import Dataset, Examples
from recgym.items import ItemTokenizer

POLICY_CONFIG = "recgym_policy.json"

_Policy = TypeVar("_Policy", bound="PolicyPersistence")


class PolicyPersistence:
    """Saving, loading and resuming, mixed into :class:`~agents.model.policy.LLMPolicy`.

    Needs from the class it is mixed into: a constructor ``cls(model, items, **kwargs)``, ``model``,
    ``items``, ``objective``, ``base_vocab_size``, ``adapter`` and ``_install_adapters``
    (:mod:`agents.model.trainable`).

    Example:
        >>> import tempfile
        >>> from agents.model.policy import LLMPolicy
        >>> from recgym.envs import RecGenTask
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     back = LLMPolicy.from_pretrained(policy.save_pretrained(folder), device="cpu")
        >>> back.items.sequences[5].tolist() == policy.items.sequences[5].tolist(), back.objective
        (True, 'full')
    """

    @classmethod
    def from_pretrained(
        cls: type[_Policy], path: str | os.PathLike[str], items: ItemTokenizer | None = None, **kwargs: Any
    ) -> _Policy:
        """Load a model from a local folder, a hub name or a named offline model (``smollm2-135m``).

        A folder written by :meth:`save_pretrained` also restores the tokenizer, representation,
        template and catalogue (so the env's tree is rebuilt); for any other model pass ``items``.
        Such a folder records its catalogue's fingerprint: ``items`` over another catalogue or
        representation is a :class:`~agents.training.runs.CatalogueMismatchError`, and a damaged folder an
        error naming the file.

        Example:
            >>> # policy = LLMPolicy.from_pretrained("runs/sft/best")
        """
        from transformers import AutoModelForCausalLM

        from agents.model.pretrained import resolve_model
        from agents.training.checkpoint import weights_file
        from agents.training.runs import CheckpointError
        from agents.training.saved import check_saved_folder

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
        fingerprint (:func:`agents.training.runs.catalogue_fingerprint`) and a SHA-256 of every other file
        written (:func:`agents.training.saved.saved_hashes`), checked when the policy is loaded.
        ``state_dict``: the weights to write instead of the model's own (a sharded model's full
        weights, gathered by :func:`agents.parallel.fsdp.full_state_dict`; not with adapters).

        Example:
            >>> # policy.save_pretrained("runs/x/best")
        """
        from agents.training.runs import catalogue_fingerprint
        from agents.training.saved import saved_hashes

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
        from agents.training.runs import CatalogueMismatchError, catalogue_fingerprint, catalogue_message

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

    def load_weights(self, folder: str | os.PathLike[str], *, remedy: str | None = None) -> None:
        """Copy the weights :meth:`save_pretrained` wrote in ``folder`` into this policy, adapters included.

        The folder's adapters must be this policy's (same LoRA layers, same new-token rows). Its
        config and weights files are checked first (:mod:`agents.training.saved`): a missing, damaged or
        changed file, or a config of another model, is a :class:`~agents.training.runs.CheckpointError`
        naming the file, with ``remedy`` as the way out.

        Example:
            >>> # policy.load_weights("runs/x/checkpoint")  # exact resume
        """
        from safetensors.torch import load_file

        from agents.training.saved import SAVE_AGAIN, check_config_fits_model, check_saved_folder

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

        from agents.training.runs import CheckpointError

        self._install_adapters(recorded["adapter"])
        try:
            tensors = load_file(folder / ADAPTER_FILE)
        except Exception as err:
            raise CheckpointError(f"{folder / ADAPTER_FILE}: the adapter weights cannot be read "
                                  f"({type(err).__name__}: {err}); save the policy again") from err
        load_state(self.model, None, tensors, str(folder))


__all__ = ["POLICY_CONFIG", "PolicyPersistence"]
