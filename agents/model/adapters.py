"""Tuning a pretrained LM on a CPU or a small GPU: LoRA adapters, a frozen trunk, trainable new-token rows.

Three ways to train part of a causal LM, alone or together (:class:`~agents.model.policy.LLMPolicy`
exposes them as ``add_lora``, ``freeze``, ``merged_adapters`` and ``merge_adapters``;
:func:`apply_adapters` applies an :class:`AdapterConfig`, the settings the CLI exposes):

* **LoRA** (Hu et al. 2021): ``peft`` injects low-rank adapters in place
  (``peft.inject_adapter_in_model``; the model keeps its class, so ``model.model(...)`` and
  ``get_output_embeddings()`` still work), W x + (alpha / r) B A x with B = 0 at the start. Only
  A and B train; in a half-precision model they are kept in float32 (as PEFT's own
  ``autocast_adapter_dtype``), so Adam's small updates are not rounded away.
* **Frozen trunk** (``"top:K"``): only the top K decoder blocks and the final norm train. The output
  of the input embeddings is detached, so nothing below block L - K needs gradients and autograd
  records nothing there: the frozen blocks run as at inference (no saved activations, no backward).
* **New-token rows** (``embeddings="new"``): rows beyond the pretrained vocabulary (e.g. SID tokens
  added to a pretrained tokenizer) train as a separate parameter, ``recgym_new_rows`` on the input
  embedding (the same parameter on a tied output layer): exactly those rows change, the
  pretrained ones cannot, whatever the optimizer's weight decay, and Adam keeps state for a few
  rows instead of the whole matrix. ``"embeddings"`` mode (MiniOneRec's ``--freeze_LLM``) trains
  only them (and an untied output layer's new rows).

Saving (:func:`split_state`) writes the base model in plain Hugging Face format (peft's
``base_layer.`` removed, trained new-token rows folded into the embedding matrix, so any loader
reads the tuned token rows) and the adapter tensors separately (``adapter.safetensors``, exact
float32); :func:`load_state` puts both back. See :func:`apply_adapters` for an example.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from agents.configs import (  # noqa: F401  (re-exported: the adapter settings live with the configs)
    EMBEDDINGS,
    LORA_TARGETS,
    AdapterConfig,
    ConfigError,
    check_embeddings,
    lora_targets,
    parse_freeze,
)

ADAPTER_FILE = "adapter.safetensors"
NEW_ROWS = "recgym_new_rows"  # parameter name of the trainable new-token rows on an embedding / output layer
_ADAPTER = "default"  # peft's adapter name; recgym keeps one adapter per policy
_LORA_KEYS = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.")


def apply_adapters(policy: Any, config: AdapterConfig) -> Any:
    """Apply ``config`` to a policy (``add_lora`` / ``freeze``); a policy that already has them is kept.

    A policy loaded from a folder saved with adapters brings them back by itself; asking it for
    the same ones again changes nothing, asking for other ones is an error (merge them first with
    ``policy.merge_adapters()``).

    Example:
        >>> from recgym.envs import RecGenTask
        >>> from agents.model.policy import LLMPolicy
        >>> task = RecGenTask("synthetic", representation="sid", vocab_size=500,
        ...                   dataset_kwargs={"num_items": 200, "num_users": 100})
        >>> policy = apply_adapters(LLMPolicy.from_config("tiny", task.items, device="cpu"),
        ...                         AdapterConfig(lora_r=4))
        >>> policy.adapter["lora"]["r"], sum(p.numel() for p in policy.trainable_parameters())
        (4, 9728)
    """
    if not config.enabled:
        return policy
    wanted = spec_of_config(config)
    current = policy.adapter
    if current is not None:
        have = {k: current.get(k) for k in wanted}
        if have == wanted:
            return policy
        raise ValueError(f"the policy already has adapters {have}, not the asked {wanted}: merge them "
                         "first (policy.merge_adapters()) or leave the adapter options out")
    kind, k = parse_freeze(config.freeze) if config.freeze else (None, None)
    if config.lora_r:
        hidden = getattr(getattr(policy.model, "config", None), "hidden_size", None)
        if isinstance(hidden, int) and config.lora_r > hidden:  # before peft allocates r x hidden matrices
            raise ConfigError("lora_r", config.lora_r, f"more than the model's hidden size {hidden} (a LoRA "
                              f"update B A has rank at most min(in, out) features): use lora_r <= {hidden}")
        policy.add_lora(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets,
                        embeddings=config.train_embeddings, top=k)
    else:
        policy.freeze(config.freeze, embeddings=config.train_embeddings)
    return policy


def spec_of_config(config: AdapterConfig) -> dict[str, Any]:
    """The parts of a policy's ``adapter`` record that ``config`` determines (to compare them).

    Example:
        >>> spec_of_config(AdapterConfig(freeze="top:2"))
        {'freeze': 'top:2', 'embeddings': 'new', 'lora': None}
    """
    lora = None
    if config.lora_r:
        lora = {"r": config.lora_r, "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
                "targets": lora_targets(config.lora_targets)}
    return {"freeze": config.freeze, "embeddings": config.train_embeddings, "lora": lora}


# -- the model's pieces --------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers``), or an error saying so.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> len(decoder_layers(m))
        2
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no model.layers list of decoder blocks: freezing by "
                         "blocks and LoRA on the top blocks need a Llama/Qwen2-style causal LM")
    return layers


def is_tied(model: nn.Module) -> bool:
    """Whether the output layer shares its weight with the input embeddings.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> is_tied(m)
        True
    """
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def head_parts(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, new_rows)`` of the output layer: rows ``V - len(new_rows)`` on are ``new_rows``.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> _ = add_new_rows(m, first=40)
        >>> weight, rows = head_parts(m)
        >>> tuple(weight.shape), tuple(rows.shape)
        ((50, 16), (10, 16))
    """
    out = model.get_output_embeddings()
    return out.weight, getattr(out, NEW_ROWS, None)


# -- LoRA ---------------------------------------------------------------------------------------------


def resolve_lora_targets(model: nn.Module, targets: str | list[str], top: int | None = None) -> list[str]:
    """Full names of the decoder's Linear layers that ``targets`` names (in the top ``top`` blocks only).

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> resolve_lora_targets(m, ["q_proj"], top=1)
        ['model.layers.1.self_attn.q_proj']
    """
    targets = lora_targets(targets)
    layers = decoder_layers(model)
    if top is not None and not 1 <= top <= len(layers):
        raise ValueError(f"top={top}: the model has {len(layers)} decoder blocks")
    allowed = None if top is None else {id(m) for b in layers[len(layers) - top:] for m in b.modules()}
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)
              and name.startswith("model.") and (allowed is None or id(m) in allowed)]
    chosen = [name for name, _ in linear if targets == LORA_TARGETS or name.rsplit(".", 1)[-1] in targets]
    if not chosen:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in linear})
        raise ValueError(f"lora_targets={targets!r} names no Linear layer of the decoder; its Linear layers "
                         f"are {names} (or use {LORA_TARGETS!r})")
    return chosen


def inject_lora(model: nn.Module, modules: list[str], r: int, alpha: float, dropout: float, *,
                seed: int = 0) -> list[nn.Parameter]:
    """Inject LoRA layers in place into ``modules`` (full names); returns the adapter parameters.

    A is initialised from ``seed`` (the global RNG is left alone), B = 0, so the model's output is
    unchanged. Adapters of a half-precision model are float32.

    Example:
        >>> # params = inject_lora(model, resolve_lora_targets(model, "all-linear"), 8, 16.0, 0.0)
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA needs the peft package: pip install peft") from err
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules),
                        bias="none")
    weight = model.get_input_embeddings().weight
    devices = [weight.device] if weight.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    params = []
    for layer in lora_layers(model):
        for sub in (layer.lora_A[_ADAPTER], layer.lora_B[_ADAPTER]):
            if sub.weight.dtype in (torch.float16, torch.bfloat16):
                sub.float()
            params.extend(sub.parameters())
    return params


def lora_layers(model: nn.Module) -> list[Any]:
    """peft's LoRA layers in ``model`` (empty when peft is absent or nothing was injected).

    Example:
        >>> # len(lora_layers(policy.model))  # 14 for the tiny preset with all-linear targets
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - depends on the environment
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def lora_merged(model: nn.Module) -> Iterator[None]:
    """Within the block, each LoRA layer's base weight is W + (alpha / r) B A and its branch is skipped.

    The original weights are put back exactly on exit (the merged ones are new tensors), so it is
    safe around evaluation inside training; nested uses merge once.

    Example:
        >>> # with lora_merged(policy.model): ranked, _ = policy.beam_search(prompts, lens)
    """
    saved = []
    try:
        with torch.no_grad():
            for layer in lora_layers(model):
                if layer.merged:
                    continue
                base = layer.get_base_layer()
                original = base.weight.data
                delta = layer.get_delta_weight(_ADAPTER)
                base.weight.data = (original.to(delta.dtype) + delta).to(original.dtype)
                layer.merged_adapters.append(_ADAPTER)
                saved.append((layer, base, original))
        yield
    finally:
        for layer, base, original in saved:
            base.weight.data = original
            layer.merged_adapters.remove(_ADAPTER)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA layer into its base weight and put the plain layer back in its place.

    Example:
        >>> # merge_lora(policy.model)  # policy.merge_adapters() also folds new-token rows
    """
    layers = set(lora_layers(model))
    with torch.no_grad():
        for name, layer in [(n, m) for n, m in model.named_modules() if m in layers]:
            base = layer.get_base_layer()
            if not layer.merged:
                delta = layer.get_delta_weight(_ADAPTER)
                base.weight.data = (base.weight.data.to(delta.dtype) + delta).to(base.weight.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, base)


# -- new-token rows and the frozen trunk -------------------------------------------------------------


def _embedding_rows_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Input embeddings of tokens >= V - n read the trainable rows instead of the frozen matrix."""
    rows = getattr(module, NEW_ROWS)
    ids = args[0]
    first = module.weight.shape[0] - rows.shape[0]
    return torch.where((ids >= first)[..., None], rows.to(output.dtype)[(ids - first).clamp(min=0)], output)


def _linear_rows_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """Output-layer logits of tokens >= V - n come from the trainable rows."""
    rows = getattr(module, NEW_ROWS)
    first = module.weight.shape[0] - rows.shape[0]
    new = nn.functional.linear(args[0].to(module.weight.dtype), rows.to(module.weight.dtype)).to(output.dtype)
    return torch.cat([output[..., :first], new], dim=-1)


def _detach_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """The frozen-trunk boundary: nothing below the trainable blocks is recorded by autograd."""
    return output.detach()


_HOOKS = (_embedding_rows_hook, _linear_rows_hook, _detach_hook)


def add_new_rows(model: nn.Module, first: int, *, inputs: bool = True) -> list[nn.Parameter]:
    """Make rows ``first`` .. V-1 trainable as separate parameters; returns them (none when V <= first).

    The rows sit on the input embedding (``inputs``) and on the output layer: one parameter when
    the two are tied, one each when not. Half-precision rows are kept in float32 and cast where
    used; the matrices' own rows ``first`` .. V-1 are shadowed (and refreshed by :func:`fold_new_rows`).

    Example:
        >>> # rows = add_new_rows(policy.model, first=49152)  # SID tokens added to SmolLM2
    """
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if first >= emb.weight.shape[0]:
        return []
    if type(emb) is not nn.Embedding or type(out) is not nn.Linear:
        raise ValueError(f"new-token rows need a plain nn.Embedding and nn.Linear output layer, got "
                         f"{type(emb).__name__} and {type(out).__name__}")

    def rows_of(weight: torch.Tensor) -> nn.Parameter:
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        return nn.Parameter(weight.detach()[first:].to(dtype).clone())

    tied = is_tied(model)
    created = []
    if inputs or tied:
        created.append(rows_of(emb.weight))
        emb.register_parameter(NEW_ROWS, created[0])
        emb.register_forward_hook(_embedding_rows_hook)
    if not tied:
        created.append(rows_of(out.weight))
    out.register_parameter(NEW_ROWS, created[-1])  # tied: the embedding's rows, one parameter
    out.register_forward_hook(_linear_rows_hook)
    return created


def detach_trunk_input(model: nn.Module) -> None:
    """Detach the input embeddings' output: autograd records nothing below the first trainable block.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> detach_trunk_input(m)
        >>> m.get_input_embeddings()(torch.tensor([1, 2])).requires_grad
        False
    """
    model.get_input_embeddings().register_forward_hook(_detach_hook)


def remove_hooks(model: nn.Module) -> None:
    """Remove the hooks this module installed (new-token rows, frozen-trunk boundary).

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> detach_trunk_input(m); remove_hooks(m)
        >>> m.get_input_embeddings()(torch.tensor([1, 2])).requires_grad
        True
    """
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if hook in _HOOKS:
                del module._forward_hooks[key]


def fold_new_rows(model: nn.Module) -> None:
    """Copy the trainable new-token rows into the embedding / output matrices (the rows they shadow).

    Example:
        >>> # fold_new_rows(policy.model)  # save_pretrained does it: any loader reads the trained rows
    """
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            rows = getattr(module, NEW_ROWS, None)
            if rows is not None:
                module.weight[module.weight.shape[0] - rows.shape[0]:] = rows.to(module.weight.dtype)


def drop_new_rows(model: nn.Module) -> None:
    """Fold the new-token rows into the matrices and make them ordinary rows again (no parameter, no hook).

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> rows = add_new_rows(m, first=40)
        >>> drop_new_rows(m)
        >>> [name for name, _ in m.named_parameters() if "rows" in name]
        []
    """
    fold_new_rows(model)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if NEW_ROWS in module._parameters:
            del module._parameters[NEW_ROWS]
    remove_hooks(model)


def set_trainable(model: nn.Module, *, lora: bool, top: int | None, embeddings: str) -> list[nn.Parameter]:
    """requires_grad for the adapter mode; returns the trainable parameters.

    ``lora``: the LoRA layers' A and B (within the top ``top`` blocks when given); else ``top``:
    every parameter of the top blocks and the final norm. ``embeddings``: ``"new"`` the new-token
    rows (if any), ``"all"`` the embedding and output matrices (only the output layer under
    ``top``, where the trunk's input is detached), ``"none"`` nothing more.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForCausalLM
        >>> m = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        >>> len(set_trainable(m, lora=False, top=1, embeddings="none"))  # block 1's 12 tensors + final norm
        13
    """
    check_embeddings(embeddings)
    model.requires_grad_(False)
    if lora:
        for layer in lora_layers(model):
            for sub in (layer.lora_A[_ADAPTER], layer.lora_B[_ADAPTER]):
                sub.requires_grad_(True)
    elif top is not None:
        layers = decoder_layers(model)
        for block in layers[len(layers) - top:]:
            block.requires_grad_(True)
        norm = getattr(model.model, "norm", None)
        if isinstance(norm, nn.Module):
            norm.requires_grad_(True)
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if embeddings == "new":
        for module in (emb, out):
            rows = getattr(module, NEW_ROWS, None)
            if rows is not None:
                rows.requires_grad_(True)
    elif embeddings == "all":
        out.weight.requires_grad_(True)
        if top is None:
            emb.weight.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


# -- saving and loading ------------------------------------------------------------------------------


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is an adapter tensor (LoRA A/B, new-token rows), not a base weight.

    Example:
        >>> is_adapter_key("model.layers.0.self_attn.q_proj.lora_A.default.weight")
        True
        >>> is_adapter_key("lm_head.weight")
        False
    """
    return bool(_LORA_KEYS.search(key)) or key.rsplit(".", 1)[-1] == NEW_ROWS


def base_key(key: str) -> str:
    """A wrapped layer's key as the plain Hugging Face model names it (peft's ``base_layer.`` removed).

    Example:
        >>> base_key("model.layers.0.self_attn.q_proj.base_layer.weight")
        'model.layers.0.self_attn.q_proj.weight'
    """
    return key.replace(".base_layer.", ".")


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys of adapter tensors that another key already holds (tied rows) -> that key."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if is_adapter_key(key):
            owner = first.setdefault(id(tensor), key)
            if owner != key:
                aliases[key] = owner
    return aliases


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(base, adapter)`` state dicts: the base in plain Hugging Face names, new-token rows folded in.

    Tied weights stay one tensor under both names (as ``save_pretrained`` expects); a tied
    output layer's rows, which are the embedding's, are written once. LoRA must not be merged
    temporarily (:func:`lora_merged`) while saving.

    Example:
        >>> # base, adapter = split_state(policy.model)
    """
    if any(layer.merged for layer in lora_layers(model)):
        raise RuntimeError("the LoRA adapters are merged into the base weights (inside merged_adapters()): "
                           "save after the block")
    fold_new_rows(model)
    aliases = _aliases(model)
    base: dict[str, torch.Tensor] = {}
    adapter: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if is_adapter_key(key):
            if key not in aliases:
                adapter[key] = tensor
        else:
            base[base_key(key)] = tensor
    return base, adapter


def load_state(model: nn.Module, base: dict[str, torch.Tensor] | None, adapter: dict[str, torch.Tensor],
               source: str = "the saved folder") -> None:
    """Copy a base state dict (plain names; None: keep the base) and adapter tensors into ``model``.

    Adapter tensors that do not match the model's adapters, or a base lacking weights, are a
    ValueError naming ``source``.

    Example:
        >>> # load_state(policy.model, fresh.state_dict(), safetensors.torch.load_file(folder / ADAPTER_FILE))
    """
    own = list(model.state_dict())
    aliases = _aliases(model)
    wanted = {k for k in own if is_adapter_key(k) and k not in aliases}
    if set(adapter) != wanted:
        missing, extra = sorted(wanted - set(adapter)), sorted(set(adapter) - wanted)
        raise ValueError(f"{source}: its adapter tensors do not fit this policy's adapters (missing "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                         f"{'...' if len(extra) > 3 else ''})")
    state = dict(adapter)
    state.update({alias: adapter[owner] for alias, owner in aliases.items()})
    if base is None:
        model.load_state_dict(state, strict=False)
        return
    names = {base_key(k): k for k in own if not is_adapter_key(k)}
    missing = sorted(set(names) - set(base))
    if missing:
        raise ValueError(f"{source}: the base weights lack {missing[:3]}: not a save of this model")
    state.update({names[k]: v for k, v in base.items() if k in names})
    model.load_state_dict(state, strict=True)


__all__ = [
    "ADAPTER_FILE", "EMBEDDINGS", "LORA_TARGETS", "NEW_ROWS", "AdapterConfig", "add_new_rows",
    "apply_adapters", "base_key", "check_embeddings", "decoder_layers", "detach_trunk_input",
    "drop_new_rows", "fold_new_rows", "head_parts", "inject_lora", "is_adapter_key", "is_tied", "load_state",
    "lora_layers", "lora_merged", "lora_targets", "merge_lora", "parse_freeze", "remove_hooks",
    "resolve_lora_targets", "set_trainable", "spec_of_config", "split_state",
]
