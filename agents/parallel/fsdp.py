"""Sharded weights, gradients and optimizer states (PyTorch's FSDP2) for the training loops under torchrun.

``SFTConfig(fsdp=True)`` / ``RLConfig(fsdp=True)`` (``--fsdp`` on ``recgym sft`` and ``recgym train``)
make :func:`agents.training.sft.train_sft` and :func:`agents.training.rl.train_rl` shard the policy while
they train (:func:`shard`); the data-parallel rules of :mod:`agents.parallel.distributed` (global batch,
shards, global counts, summed gradients) are unchanged, so N sharded ranks still take one process's step.

What is sharded and what is not:

* Each **decoder block** (``model.model.layers[i]`` of a Hugging Face causal LM: Qwen2, Llama,
  SmolLM2, ...) is one ``fully_shard`` group: its weights, gradients and AdamW moments are split
  over the ranks (dim 0), the weights are all-gathered in the block's forward and backward, and its
  gradients are reduce-scattered as **sums** (divide factor 1, sum reductions), like every other
  gradient of the loops. The decoder (``model.model``) is the FSDP root and owns no parameter.
* The **embeddings, the final norm and the output layer** stay ordinary replicated parameters: the
  policy reads the output layer directly (sparse head, ``head_rows``, ``full_logits``), the input and
  output embeddings may be one tied matrix, and their gradients are summed by
  :func:`agents.parallel.distributed.sum_gradients` as without FSDP (which skips the sharded ones).
* **Gradient clipping** uses :func:`agents.parallel.distributed.clip_grad_norm`: the global norm over the
  blocks' shards (summed over ranks) and the replicated gradients (counted once).
* **Inference** (rollouts, the reference / behaviour log-probs, validation) runs inside
  :func:`gathered`: every block is all-gathered once and kept whole until the block ends, so each
  rank decodes alone (KV cache, beam search, early stops) with no per-forward collective, and the
  numbers are exactly those of the unsharded weights. A rank then holds the whole model while it
  decodes; the saving is in the gradients and optimizer states, and in the weights during updates.
* **Files** are the ordinary ones: ``best/``, ``checkpoint/`` and ``reference/`` hold the full
  weights (:func:`full_state_dict`, written by rank 0) and ``trainer_state.pt`` the full AdamW state
  in one process's layout (:func:`full_optimizer_state`), so a folder written under FSDP loads in one
  process (``LLMPolicy.from_pretrained``, ``recgym eval``) and a run resumes with or without FSDP
  and on any number of ranks (:func:`load_optimizer_state` shards the moments again).
* At the end of a loop :meth:`Sharded.restore` gives the policy an ordinary (unsharded) model with
  the trained weights on every rank, so evaluation, saving and a following loop work as usual. A
  loop that fails (an error on any rank) leaves the policy sharded: load the run's files again.

Limits: adapters (LoRA, ``freeze``) are refused with ``--fsdp`` (:func:`check`: LoRA is merged into
the blocks' weights for inference and a frozen trunk takes the lower blocks out of backward, which
this sharding does not handle); the reference policy of GRPO / RISER's KL stays a full replica on every
rank; every rank must run the same number of forwards through the blocks in each training loss
(true for SFT and the built-in learners; a rank whose SFT shard is empty runs a forward with a zero
loss; the policy's length buckets, whose number differs by rank, are off there:
:func:`forwards_are_collective`); with one process ``fsdp=True`` does nothing but say so
(:func:`wanted`). Tested on CPU with gloo and 2 processes (torch 2.13), not on GPUs.

Example:
    >>> import torch
    >>> is_sharded(torch.nn.Linear(2, 2))
    False
    >>> with gathered(torch.nn.Linear(2, 2)):   # an unsharded model: nothing to gather
    ...     pass
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from agents.parallel import distributed as dist
from agents.parallel.distributed import is_dtensor  # re-exported: FSDP's sharded tensors

FLAG = "fsdp=True (--fsdp)"
_SHARDED: weakref.WeakKeyDictionary[nn.Module, Sharded] = weakref.WeakKeyDictionary()


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks FSDP shards: ``model.model.layers`` of a Hugging Face causal LM.

    Example:
        >>> decoder_blocks(torch.nn.Linear(2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: fsdp=True (--fsdp) needs a Hugging Face causal LM whose decoder blocks are ...
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{FLAG} needs a Hugging Face causal LM whose decoder blocks are model.model.layers "
                         f"(Qwen2, Llama, SmolLM2, ...); {type(model).__name__} has none")
    return list(layers)


def check(policy: Any) -> None:
    """Refuse what FSDP cannot shard: adapters (LoRA, frozen trunk) and models without decoder blocks.

    Example:
        >>> from types import SimpleNamespace
        >>> check(SimpleNamespace(adapter={"lora": {"r": 8}}, model=None))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: fsdp=True (--fsdp) does not work with adapters (--lora-r, --freeze; ...
    """
    if getattr(policy, "adapter", None) is not None:
        raise ValueError(f"{FLAG} does not work with adapters (--lora-r, --freeze; policy.add_lora / "
                         "policy.freeze): LoRA is merged into the blocks' weights for inference and a frozen "
                         "trunk takes the lower blocks out of backward, which recgym's sharded blocks do not "
                         "handle. Train without --fsdp (LoRA's gradients and optimizer states are small) or "
                         "without adapters")
    decoder_blocks(policy.model)


def wanted(requested: bool, policy: Any) -> bool:
    """Whether a training loop shards its policy: ``requested`` and several processes.

    A request is checked (:func:`check`) in one process too, so a command that will fail under
    torchrun fails at once; in one process it then does nothing but warn once (one line).

    Example:
        >>> wanted(False, None)
        False
    """
    if not requested:
        return False
    check(policy)
    if not dist.is_distributed():
        warnings.warn(f"{FLAG} has no effect in one process: it shards the model over the processes of a "
                      "torchrun launch (torchrun --nproc-per-node N -m agents.cli ...)", stacklevel=1)
        return False
    return True


# -- sharding and back -----------------------------------------------------------------------------


class Sharded:
    """A policy whose decoder blocks are sharded for one training loop (made by :func:`shard`).

    :meth:`restore` puts an ordinary model with the trained weights back into the policy.

    Example:
        >>> # sharding = shard(policy); ...train...; sharding.restore()
    """

    def __init__(self, policy: Any, blocks: list[nn.Module], skeleton: nn.Module,
                 aliases: list[tuple[str, str]]) -> None:
        self.policy = policy
        self.model: nn.Module = policy.model
        self.blocks = blocks
        self.skeleton: nn.Module | None = skeleton
        self.aliases = aliases
        self.gathered_depth = 0
        self.ran = False  # whether the decoder has run a forward (FSDP initialises itself in the first)
        self._hook = policy.model.model.register_forward_pre_hook(self._ran)

    def _ran(self, *_: Any) -> None:
        self.ran = True

    def restore(self) -> None:
        """Give the policy an ordinary model with the current weights, on every rank (a collective).

        The full weights are gathered on every rank and moved into a copy of the model made before
        sharding (whose tensors were on the meta device), tied weights tied again; the sharded model
        is dropped. Call it on every rank, after the last training step.

        Example:
            >>> # sharding.restore(); policy.save_pretrained("runs/x/final")  # a plain model again
        """
        if self.skeleton is None:
            return
        full = full_state_dict(self.model, rank0_only=False, cpu=False)
        fresh, self.skeleton = self.skeleton, None
        fresh.load_state_dict(full, strict=True, assign=True)
        for alias, canonical in self.aliases:  # tied weights: one Parameter under both names again
            owner, _, name = alias.rpartition(".")
            setattr(fresh.get_submodule(owner), name, fresh.get_parameter(canonical))
        left = [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"FSDP restore: {left[:3]} were not restored (the model keeps tensors outside "
                               "its state dict); train without --fsdp")
        fresh.train(self.model.training)
        self._hook.remove()
        _SHARDED.pop(self.model, None)
        self.policy.model = fresh
        self.model = fresh


def shard(policy: Any) -> Sharded:
    """Shard ``policy``'s decoder blocks over the ranks with FSDP2 (in place); returns the handle.

    Every rank calls it with the same weights (after ``broadcast_parameters``); build the optimizer
    afterwards, over ``policy.trainable_parameters()`` (the blocks' are then ``DTensor`` shards).

    Example:
        >>> # sharding = shard(policy); optimizer = torch.optim.AdamW(policy.trainable_parameters())
    """
    check(policy)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError as err:  # pragma: no cover - old torch
        raise RuntimeError(f"{FLAG} needs PyTorch's FSDP2 (torch.distributed.fsdp.fully_shard; tested with "
                           f"torch 2.13, this is torch {torch.__version__})") from err
    for setting in ("set_gradient_divide_factor", "set_force_sum_reduction_for_comms"):
        if not hasattr(FSDPModule, setting):  # pragma: no cover - old torch
            raise RuntimeError(f"{FLAG} needs FSDPModule.{setting} (tested with torch 2.13, this is torch "
                               f"{torch.__version__})")
    model = policy.model
    blocks = decoder_blocks(model)
    aliases = _aliases(model)
    skeleton = _meta_copy(model)
    mesh = init_device_mesh(policy.device.type, (dist.world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
        block.set_gradient_divide_factor(1.0)  # gradients summed over ranks, as sum_gradients does
        block.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    trunk = model.model
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    fully_shard(trunk, mesh=mesh, ignored_params={p for p in trunk.parameters() if id(p) not in in_blocks})
    handle = Sharded(policy, blocks, skeleton, aliases)
    _SHARDED[model] = handle
    return handle


def _aliases(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, first name)`` of every parameter reached under a second name (tied weights)."""
    first: dict[int, str] = {}
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    return out


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (modules, settings, buffers shared) whose parameters are on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b  # buffers are never sharded: the copy shares them
    return copy.deepcopy(model, memo)


def is_sharded(model: nn.Module) -> bool:
    """Whether :func:`shard` sharded ``model`` (and it has not been restored).

    Example:
        >>> is_sharded(torch.nn.Linear(2, 2))
        False
    """
    return model in _SHARDED


def forwards_are_collective(model: nn.Module) -> bool:
    """Whether each forward through ``model``'s blocks is a collective: sharded, outside :func:`gathered`
    (a training loss under FSDP), so every rank must run as many forwards as the others.

    Example:
        >>> forwards_are_collective(torch.nn.Linear(2, 2))
        False
    """
    handle = _SHARDED.get(model)
    return handle is not None and handle.gathered_depth == 0


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Within the block a sharded model's blocks are whole on every rank: inference without collectives.

    Entering all-gathers every block once (a collective: every rank enters together); the blocks
    then stay whole across forwards (decoding, beam search, KV cache) and are sharded again at the
    end. Nested blocks gather once; an unsharded model is left alone. For ``torch.no_grad()`` work
    (rollouts, validation, reference log-probs), not for training.

    Example:
        >>> # with gathered(policy.model):
        >>> #     metrics = evaluate(policy, valid_task)
    """
    handle = _SHARDED.get(model)
    if handle is None or handle.gathered_depth > 0:
        if handle is not None:
            handle.gathered_depth += 1
        try:
            yield
        finally:
            if handle is not None:
                handle.gathered_depth -= 1
        return
    handle.gathered_depth = 1
    try:
        for block in handle.blocks:
            block.set_reshard_after_forward(False, recurse=False)
            block.unshard()
        yield
    finally:
        handle.gathered_depth = 0
        for block in handle.blocks:
            block.reshard()
            block.set_reshard_after_forward(True, recurse=False)
        if handle.ran:  # else FSDP has recorded nothing yet (and is not initialised)
            _forget_forwards(handle.model.model)


def _forget_forwards(root: Any) -> None:
    """Drop what FSDP recorded of the forwards just run (no backward follows them).

    FSDP2 keeps the order of each iteration's forwards to prefetch the blocks' all-gathers in
    backward; it is cleared only by a backward. Inference forwards differ between ranks (one may
    search no batch at all), so left there they would make the ranks prefetch different blocks in
    the next backward and their collectives would no longer match (a hang).
    """
    reset = getattr(root, "reset_iter_state", None)
    if reset is not None:  # torch >= 2.13: the public way
        reset()
        return
    state = root._get_fsdp_state()  # pragma: no cover - older torch: the same two lists by hand
    state._comm_ctx.post_forward_order.clear()
    for block_state in state._state_ctx.all_states:
        for group in block_state._fsdp_param_groups:
            group._post_forward_indices.clear()


# -- full state dicts (what files hold) ---------------------------------------------------------------


def full_state_dict(
    model: nn.Module, *, rank0_only: bool = True, cpu: bool = True
) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict with sharded tensors gathered (a collective when sharded).

    Returns None when ``model`` is not sharded (write its own weights), and on ranks other than 0
    with ``rank0_only``. Tied weights stay one tensor under both names; ``cpu`` moves the tensors
    to the CPU one at a time, so no device holds two copies.

    Example:
        >>> full_state_dict(torch.nn.Linear(2, 2)) is None
        True
    """
    if not is_sharded(model):
        return None
    keep = dist.is_main() or not rank0_only
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor | None] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in done:  # a tied tensor is gathered once
            tensor = value.full_tensor() if is_dtensor(value) else value  # every rank: a collective
            done[id(value)] = (tensor.detach().cpu() if cpu else tensor.detach()) if keep else None
        if keep:
            out[name] = done[id(value)]
    return out if keep else None


def full_optimizer_state(
    optimizer: torch.optim.Optimizer, *, rank0_only: bool = True
) -> dict[str, Any] | None:
    """``optimizer.state_dict()`` with sharded moments gathered whole: one process's layout.

    A collective when the optimizer holds sharded states (every rank calls it); None when it holds
    none (save ``optimizer.state_dict()`` as usual) and on ranks other than 0 with ``rank0_only``.

    Example:
        >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
        >>> full_optimizer_state(opt) is None
        True
    """
    saved = optimizer.state_dict()
    if not any(is_dtensor(v) for entry in saved["state"].values() for v in entry.values()):
        return None
    keep = dist.is_main() or not rank0_only
    state: dict[Any, dict[str, Any]] = {}
    for index in sorted(saved["state"]):
        entry = {}
        for key in sorted(saved["state"][index]):
            value = saved["state"][index][key]
            if is_dtensor(value):
                value = value.full_tensor()
            if torch.is_tensor(value):
                value = value.detach().cpu() if keep else None
            entry[key] = value
        state[index] = entry
    return {"state": state, "param_groups": saved["param_groups"]} if keep else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, sharding the full moments of sharded parameters first.

    ``saved`` is one process's layout (:func:`full_optimizer_state` or ``optimizer.state_dict()``);
    each rank keeps its own shard of every moment (no communication).

    Example:
        >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
        >>> load_optimizer_state(opt, opt.state_dict())
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_dtensor(p) for p in params):
        optimizer.load_state_dict(saved)
        return
    state = {}
    for index, entry in saved["state"].items():
        p = params[int(index)]
        if is_dtensor(p):  # a full moment of p's shape -> this rank's shard of it (p's placement)
            entry = {key: _shard_of(value, p) if _full_moment(key, value, p) else value
                     for key, value in entry.items()}
        state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _shard_of(value: torch.Tensor, param: Any) -> Any:
    """``value`` (of ``param``'s full shape) as a ``DTensor`` placed as ``param``: this rank's shard, no copy
    from other ranks."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def _full_moment(key: str, value: Any, param: torch.Tensor) -> bool:
    return key != "step" and torch.is_tensor(value) and not is_dtensor(value) and value.shape == param.shape


__all__ = ["Sharded", "check", "decoder_blocks", "full_optimizer_state", "full_state_dict", "gathered",
           "is_dtensor", "is_sharded", "load_optimizer_state", "shard", "wanted"]
