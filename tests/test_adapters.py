"""LoRA, frozen trunk and new-token rows (agents.model.adapters) through the policy, SFT and every RL learner.

The "pretrained" models are tiny Hugging Face folders written here whose vocabulary lacks the SID
tokens (as SmolLM2 does), so loading them over the SID task adds new rows: a tied Qwen2 and an
untied Llama. Which parameters train is derived below from the names alone, by hand.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from agents.cli_options import add_config_arguments, config_from_args  # noqa: E402
from agents.configs import ConfigError  # noqa: E402
from agents.learners import make_learner  # noqa: E402
from agents.model.adapters import ADAPTER_FILE, NEW_ROWS, AdapterConfig, apply_adapters  # noqa: E402
from agents.model.policy import LLMPolicy, make_rollout_env  # noqa: E402
from agents.training.rl import RLConfig, train_rl  # noqa: E402
from agents.training.sft import SFTConfig, sft_loss, train_sft  # noqa: E402
from recgym.data import make_synthetic  # noqa: E402
from recgym.envs import RecGenTask  # noqa: E402
from recgym.items import sid_vocabulary  # noqa: E402

LAYERS = 3
MODES = {
    "lora": AdapterConfig(lora_r=4, lora_alpha=8),
    "lora-top1": AdapterConfig(lora_r=4, lora_alpha=8, freeze="top:1"),
    "top1": AdapterConfig(freeze="top:1"),
    "embeddings": AdapterConfig(freeze="embeddings"),
}


def expected_trainable(name: str, mode: str) -> bool:
    """Which parameter trains in each mode, by its name (new-token rows train in every mode here)."""
    if name.endswith(NEW_ROWS):
        return True
    top = f".layers.{LAYERS - 1}."
    return {"lora": ".lora_" in name, "lora-top1": ".lora_" in name and top in name,
            "top1": top in name or name == "model.norm.weight", "embeddings": False}[mode]


@pytest.fixture(scope="module")
def task():
    ds = make_synthetic(num_items=12, num_users=60, num_categories=2, clusters_per_category=2, seed=0)
    return RecGenTask(ds, split="train", representation="sid", vocab_size=300)


@pytest.fixture(scope="module")
def pretrained(task, tmp_path_factory):
    """Folders of a tied Qwen2 and an untied Llama whose vocabulary stops before the SID tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    base = task.items.vocab_size - len(sid_vocabulary(task.dataset.catalogue.sids))
    sizes = {"vocab_size": base, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": LAYERS,
             "num_attention_heads": 2, "num_key_value_heads": 1, "eos_token_id": task.items.eos_token_id,
             "pad_token_id": task.items.pad_token_id}
    folders = {}
    for kind, config, cls in (("qwen2", Qwen2Config(tie_word_embeddings=True, **sizes), Qwen2ForCausalLM),
                              ("llama", LlamaConfig(tie_word_embeddings=False, **sizes), LlamaForCausalLM)):
        torch.manual_seed(0)
        folders[kind] = tmp_path_factory.mktemp(kind)
        cls(config).save_pretrained(folders[kind])
    return folders, base


def load(pretrained, task, kind="qwen2", mode=None, **kwargs) -> LLMPolicy:
    torch.manual_seed(0)  # resizing the embeddings draws the new rows
    policy = LLMPolicy.from_pretrained(pretrained[0][kind], items=task.items, device="cpu", **kwargs)
    return apply_adapters(policy, MODES[mode]) if mode else policy


def batch_logprobs(policy, task, rows=None):
    rows = np.arange(6) if rows is None else rows
    with torch.no_grad():
        return policy.sequence_logprobs(*task.prompt_tokens(rows),
                                        policy.item_responses(task.examples.target[rows]))[0]


def snapshot(policy):
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def check_only_trainable_changed(policy, before, mode):
    """Frozen tensors byte-identical, every trainable one moved."""
    params = dict(policy.model.named_parameters())
    for name, value in policy.model.state_dict().items():
        if name in params and expected_trainable(name, mode):
            assert not torch.equal(value, before[name]), f"{name} should have trained"
        elif not name.endswith(NEW_ROWS):  # a tied output layer's alias of the rows is checked above
            assert torch.equal(value, before[name]), f"{name} is frozen but changed"


# -- what trains -----------------------------------------------------------------------------------


def test_pretrained_vocabulary_is_recorded_and_new_rows_start_as_the_resized_rows(pretrained, task):
    folders, base = pretrained
    policy = load(pretrained, task)
    assert policy.base_vocab_size == base < task.items.vocab_size
    emb = policy.model.get_input_embeddings().weight.detach().clone()
    policy.freeze("embeddings")
    rows = getattr(policy.model.get_input_embeddings(), NEW_ROWS)
    assert rows.shape == (task.items.vocab_size - base, 32) and torch.equal(rows, emb[base:])
    assert getattr(policy.model.get_output_embeddings(), NEW_ROWS) is rows  # tied: one parameter
    assert policy.adapter["new_rows"] == task.items.vocab_size - base
    untied = load(pretrained, task, "llama", "embeddings")
    assert getattr(untied.model.get_output_embeddings(), NEW_ROWS) is not \
        getattr(untied.model.get_input_embeddings(), NEW_ROWS)


def test_head_rows_of_a_two_dimensional_index_are_the_rows_of_each_entry(pretrained, task):
    # unlikelihood scores C candidate tokens per position: head_rows((N, C)) -> (N, C, H), new rows included
    folders, base = pretrained
    policy = load(pretrained, task)
    policy.freeze("embeddings")
    with torch.no_grad():
        getattr(policy.model.get_output_embeddings(), NEW_ROWS).add_(1.0)  # new rows differ from the base's
    index = torch.tensor([[0, base - 1, base], [base + 1, 3, task.items.vocab_size - 1]])
    rows = policy.head_rows(index)
    assert rows.shape == (2, 3, 32)
    for i in range(2):
        for j in range(3):
            assert torch.equal(rows[i, j], policy.head_rows(index[i, j:j + 1])[0])
    new = getattr(policy.model.get_output_embeddings(), NEW_ROWS)
    assert torch.equal(rows[0, 2], new[0]) and torch.equal(rows[1, 0], new[1])


@pytest.mark.parametrize("kind,mode", [*(("qwen2", m) for m in MODES), ("llama", "lora-top1"),
                                       ("llama", "embeddings")])
def test_adapters_leave_the_model_unchanged_then_train_only_their_parameters(pretrained, task, kind, mode):
    policy = load(pretrained, task, kind)
    plain = batch_logprobs(policy, task)
    apply_adapters(policy, MODES[mode])
    # Identical up to summation order (the head runs the new-token rows as a second matmul).
    torch.testing.assert_close(batch_logprobs(policy, task), plain, atol=1e-6, rtol=0)
    names = [n for n, _ in policy.model.named_parameters()]
    assert {n for n, p in policy.model.named_parameters() if p.requires_grad} == \
        {n for n in names if expected_trainable(n, mode)}
    assert policy.trainable_parameters() == [p for p in policy.model.parameters() if p.requires_grad]
    # Gradients: on every trainable parameter (LoRA's A is zero at the start, as B = 0), None elsewhere.
    loss, _ = sft_loss(policy, task, np.arange(16))
    loss.backward()
    for name, p in policy.model.named_parameters():
        if expected_trainable(name, mode):
            assert p.grad is not None, name
            if "lora_A" not in name:
                assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    policy.model.zero_grad(set_to_none=True)
    # A few SFT steps (weight decay on): only trainable tensors move, and the loss drops.
    before = snapshot(policy)
    rows = np.arange(64)
    with torch.no_grad():
        start = float(sft_loss(policy, task, rows)[0])
    cfg = SFTConfig(batch_size=16, max_steps=4, lr=2e-2, weight_decay=0.1, warmup_steps=0, progress=False)
    train_sft(policy, task, None, cfg)
    check_only_trainable_changed(policy, before, mode)
    with torch.no_grad():
        assert float(sft_loss(policy, task, rows)[0]) < start


@pytest.mark.parametrize("learner", ["grpo", "simpo", "riser"])
@pytest.mark.parametrize("mode", ["lora", "top1", "embeddings"])
def test_every_learner_trains_only_the_adapters(pretrained, task, learner, mode):
    policy = load(pretrained, task, "qwen2", mode)
    settings = {"grpo": {"group_size": 8}, "simpo": {"group_size": 8},
                "riser": {"group_size": 6, "oversample": 8}}[learner]
    before = snapshot(policy)
    cfg = RLConfig(steps=2, requests_per_step=4, minibatches=2, lr=2e-2, warmup_steps=0, eval_every=0,
                   progress=False, seed=1)
    train_rl(policy, make_learner(learner, **settings), task, None, cfg)
    check_only_trainable_changed(policy, before, mode)


@pytest.mark.parametrize("mode", ["lora-top1", "top1", "embeddings"])
def test_shared_prompt_update_equals_full_recompute_with_adapters(pretrained, task, mode):
    """group_logprobs (prompt KV expanded, top blocks' KV with gradients) == sequence_logprobs."""
    policy = load(pretrained, task, "qwen2", mode)
    with torch.no_grad():  # move the adapters off their identity start so every gradient is non-trivial
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ro = policy.rollout(make_rollout_env(task, 12), group_size=4, generator=torch.Generator().manual_seed(0),
                        seed=2)
    responses = torch.where(ro.mask, ro.tokens, -1)
    index = np.repeat(np.arange(3), 4)

    def run(fn):
        policy.model.zero_grad(set_to_none=True)
        logp, ent, _ = fn()
        (logp.sum() + 0.3 * ent.sum()).backward()
        return logp.detach(), [p.grad.clone() for p in policy.trainable_parameters()]

    shared = run(lambda: policy.group_logprobs(ro.prompt_ids, ro.prompt_mask, responses, index))
    full = run(lambda: policy.sequence_logprobs(*task.prompt_tokens(ro.rows), responses))
    torch.testing.assert_close(shared[0], full[0], atol=1e-5, rtol=0)
    for a, b in zip(shared[1], full[1]):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# -- the frozen trunk runs without autograd -------------------------------------------------------------


def _graph_below_the_top(policy, task):
    """(requires_grad of each block's output, bytes autograd saved for backward) in one SFT loss."""
    policy.bucket_padding = None  # one forward of the whole batch: one flag per block
    flags = []
    hooks = [block.register_forward_hook(lambda m, a, out: flags.append(out.requires_grad))
             for block in policy.model.model.layers]
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sft_loss(policy, task, np.arange(16))
    for h in hooks:
        h.remove()
    return flags, saved[0]


def test_frozen_blocks_build_no_graph_and_save_no_activations(pretrained, task):
    full_flags, full_bytes = _graph_below_the_top(load(pretrained, task), task)
    assert full_flags == [True] * LAYERS
    frozen = load(pretrained, task, mode="top1")
    flags, frozen_bytes = _graph_below_the_top(frozen, task)
    assert flags == [False] * (LAYERS - 1) + [True]
    assert frozen_bytes < 0.5 * full_bytes  # one block of three (plus the head) keeps activations
    # Switched off: the trainable new-token rows feed the trunk, so without the boundary's detach
    # autograd would record every frozen block.
    from agents.model.adapters import _detach_hook

    emb = frozen.model.get_input_embeddings()
    key = next(k for k, h in emb._forward_hooks.items() if h is _detach_hook)
    del emb._forward_hooks[key]
    assert _graph_below_the_top(frozen, task)[0] == [True] * LAYERS


# -- saving, loading, merging ------------------------------------------------------------------------


@pytest.mark.parametrize("kind,mode", [("qwen2", "lora"), ("llama", "lora-top1"), ("qwen2", "top1"),
                                       ("llama", "embeddings")])
def test_save_load_restores_base_and_adapters_exactly(pretrained, task, kind, mode, tmp_path):
    from transformers import AutoModelForCausalLM

    policy = load(pretrained, task, kind, mode)
    cfg = SFTConfig(batch_size=8, max_steps=2, lr=2e-2, warmup_steps=0, progress=False)
    train_sft(policy, task, None, cfg)
    policy.save_pretrained(tmp_path / "p")
    back = LLMPolicy.from_pretrained(tmp_path / "p", device="cpu")
    assert back.adapter == policy.adapter and back.base_vocab_size == policy.base_vocab_size
    mine, theirs = policy.model.state_dict(), back.model.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert [n for n, p in back.model.named_parameters() if p.requires_grad] == \
        [n for n, p in policy.model.named_parameters() if p.requires_grad]
    torch.testing.assert_close(batch_logprobs(back, task), batch_logprobs(policy, task), atol=0, rtol=0)
    # In place, as a resumed run does: a policy with the same adapters gets the same tensors.
    fresh = load(pretrained, task, kind, mode)
    fresh.load_weights(tmp_path / "p")
    assert all(torch.equal(fresh.model.state_dict()[k], mine[k]) for k in mine)
    with pytest.raises(ValueError, match="adapters"):
        load(pretrained, task, kind).load_weights(tmp_path / "p")
    # Any loader reads the base: plain Hugging Face names, the trained new-token rows folded in.
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    for key, value in plain.state_dict().items():
        own = mine.get(key, mine.get(key.replace("_proj.", "_proj.base_layer.")))
        assert torch.equal(value, own), key
    emb = policy.model.get_input_embeddings()
    if hasattr(emb, NEW_ROWS):
        rows = getattr(emb, NEW_ROWS)
        assert torch.equal(plain.get_input_embeddings().weight[-rows.shape[0]:], rows.detach())
    assert (tmp_path / "p" / ADAPTER_FILE).exists()


def assert_same_beams(got: tuple, want: tuple, atol: float = 1e-5) -> None:
    """The same items with the same scores, best first; two items may trade places only where their
    scores tie within ``atol`` (merged weights change logits in the last float32 bits)."""
    np.testing.assert_allclose(got[1], want[1], atol=atol)
    for items, scores, other, other_scores in zip(got[0], got[1], want[0], want[1]):
        score_of = dict(zip(other.tolist(), other_scores.tolist()))
        for item, score, theirs in zip(items.tolist(), scores.tolist(), other.tolist()):
            if item != theirs:
                assert item in score_of and abs(score_of[item] - score) <= atol, (item, theirs, score)


def test_merged_lora_gives_the_same_logprobs_and_beams_and_restores_weights_exactly(pretrained, task):
    policy = load(pretrained, task, "llama", "lora")
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    policy.model.eval()
    before = snapshot(policy)
    prompts, lens = task.prompt_tokens(np.arange(6))
    policy.merge_at_inference = False
    unmerged_logp = batch_logprobs(policy, task)
    unmerged = policy.beam_search(prompts, lens, width=8)
    q_proj = policy.model.model.layers[0].self_attn.q_proj
    with policy.merged_adapters():
        assert q_proj.merged and not torch.equal(q_proj.base_layer.weight, before[
            "model.layers.0.self_attn.q_proj.base_layer.weight"])
        merged_logp = batch_logprobs(policy, task)
        merged = policy.beam_search(prompts, lens, width=8)
    assert not q_proj.merged
    assert all(torch.equal(v, before[k]) for k, v in policy.model.state_dict().items())
    torch.testing.assert_close(merged_logp, unmerged_logp, atol=1e-5, rtol=0)
    assert_same_beams(merged, unmerged)
    assert not torch.allclose(unmerged_logp, batch_logprobs(load(pretrained, task, "llama"), task))
    policy.merge_at_inference = True  # beam search merging by itself: same beams
    assert_same_beams(policy.beam_search(prompts, lens, width=8), unmerged)
    # For good: a plain model with the same log-probs, every weight trainable, no adapter file.
    policy.merge_adapters()
    assert policy.adapter is None
    assert not any(".lora_" in k or NEW_ROWS in k for k in policy.model.state_dict())
    assert all(p.requires_grad for p in policy.model.parameters())
    torch.testing.assert_close(batch_logprobs(policy, task), unmerged_logp, atol=1e-5, rtol=0)


def test_training_resumes_exactly_with_adapters(pretrained, task, tmp_path, monkeypatch):
    """SFT (LoRA) and RL (LoRA on the top block, new rows, a frozen reference) killed, rerun: same weights."""
    import agents.training.rl
    import agents.training.sft

    def killed(module, name, at):
        calls, real = [0], getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return wrapper

    def same(a, b):
        x, y = a.model.state_dict(), b.model.state_dict()
        return list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)

    cfg = SFTConfig(batch_size=8, max_steps=4, eval_every=2, lr=2e-2, warmup_steps=0, progress=False)
    straight = load(pretrained, task, "qwen2", "lora")
    train_sft(straight, task, None, cfg, run_dir=tmp_path / "sft-a")
    with monkeypatch.context() as m:
        objective = agents.training.sft.SFTObjective
        m.setattr(objective, "loss", killed(objective, "loss", 3))
        with pytest.raises(KeyboardInterrupt):
            train_sft(load(pretrained, task, "qwen2", "lora"), task, None, cfg, run_dir=tmp_path / "sft-b")
    resumed = load(pretrained, task, "qwen2", "lora")
    train_sft(resumed, task, None, cfg, run_dir=tmp_path / "sft-b")
    assert same(straight, resumed)

    cfg = RLConfig(steps=3, requests_per_step=2, eval_every=2, minibatches=2, lr=2e-2, warmup_steps=0,
                   progress=False)
    learner = make_learner("riser", group_size=4, oversample=6, beta=0.05)
    straight = load(pretrained, task, "qwen2", "lora-top1")
    train_rl(straight, learner, task, None, cfg, run_dir=tmp_path / "rl-a")
    with monkeypatch.context() as m:
        m.setattr(agents.training.rl, "_train_step", killed(agents.training.rl, "_train_step", 3))
        with pytest.raises(KeyboardInterrupt):
            train_rl(load(pretrained, task, "qwen2", "lora-top1"), learner, task, None, cfg,
                     run_dir=tmp_path / "rl-b")
    resumed = load(pretrained, task, "qwen2", "lora-top1")
    train_rl(resumed, learner, task, None, cfg, run_dir=tmp_path / "rl-b")
    assert same(straight, resumed)
    assert (tmp_path / "rl-a" / "reference" / ADAPTER_FILE).exists()


# -- bf16 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, "lora"])
def test_bf16_weights_give_float32_logprobs_close_to_the_float32_model(pretrained, task, mode):
    """The CUDA default (bf16 weights) on CPU: every path runs, log-probs and losses are float32."""
    fp32 = load(pretrained, task, "qwen2", mode)
    bf16 = load(pretrained, task, "qwen2", mode, dtype=torch.bfloat16)
    assert bf16.head_weight.dtype == torch.bfloat16
    if mode:
        assert all(p.dtype == torch.float32 for p in bf16.trainable_parameters())  # adapters kept float32
    ref, low = batch_logprobs(fp32, task), batch_logprobs(bf16, task)
    assert low.dtype == torch.float32
    # bf16 keeps 8 mantissa bits; on this model the largest gap is 6e-4 nats (8e-4 rel.), 4e-3 with 8 blocks.
    torch.testing.assert_close(low, ref, atol=5e-3, rtol=0)
    ro = bf16.rollout(make_rollout_env(task, 8), group_size=4, generator=torch.Generator().manual_seed(0),
                      seed=0)
    assert ro.logprobs.dtype == torch.float32 and torch.isfinite(ro.logprobs).all()
    logp, ent, _ = bf16.group_logprobs(ro.prompt_ids, ro.prompt_mask, torch.where(ro.mask, ro.tokens, -1),
                                       np.repeat(np.arange(2), 4))
    assert logp.dtype == ent.dtype == torch.float32
    terminals, scores = bf16.beam_search(*task.prompt_tokens(np.arange(4)), width=6)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    ref_terminals, ref_scores = fp32.beam_search(*task.prompt_tokens(np.arange(4)), width=6)
    np.testing.assert_allclose(scores[:, 0], ref_scores[:, 0], atol=2e-2)
    loss, _ = sft_loss(bf16, task, np.arange(8))
    assert loss.dtype == torch.float32
    before = snapshot(bf16)
    cfg = RLConfig(steps=1, requests_per_step=2, minibatches=1, lr=1e-2, warmup_steps=0, eval_every=0,
                   progress=False)
    train_rl(bf16, make_learner("riser", group_size=4, oversample=6), task, None, cfg)
    changed = [k for k, v in bf16.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v.float()).all() for v in bf16.model.state_dict().values())


# -- settings ---------------------------------------------------------------------------------------------


def test_adapter_config_checks_fields_and_makes_cli_options(pretrained, task):
    with pytest.raises(ConfigError, match="lora_r"):
        AdapterConfig(lora_r=-1)
    with pytest.raises(ConfigError, match="freeze"):
        AdapterConfig(freeze="bottom:2")
    with pytest.raises(ConfigError, match="freeze"):
        AdapterConfig(lora_r=8, freeze="embeddings")
    with pytest.raises(ConfigError, match="train_embeddings"):
        AdapterConfig(train_embeddings="some")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, AdapterConfig)
    args = parser.parse_args(["--lora-r", "8", "--freeze", "top:2", "--lora-targets", "q_proj,v_proj"])
    config = config_from_args(AdapterConfig, args)
    assert config == AdapterConfig(lora_r=8, freeze="top:2", lora_targets="q_proj,v_proj")
    policy = apply_adapters(load(pretrained, task), config)
    lora = sorted(n for n, p in policy.model.named_parameters() if ".lora_A." in n)
    assert lora == [f"model.layers.{i}.self_attn.{m}_proj.lora_A.default.weight"
                    for i in (1, 2) for m in "qv"]
    assert apply_adapters(policy, config) is policy  # the same adapters again: nothing changes
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapters(policy, AdapterConfig(lora_r=4))
    with pytest.raises(ValueError, match="no Linear layer"):
        load(pretrained, task).add_lora(target_modules=["qkv"])
    with pytest.raises(ValueError, match="decoder blocks"):
        load(pretrained, task).freeze("top:9")
    scratch = LLMPolicy.from_config("tiny", task.items, device="cpu")  # no pretrained vocabulary
    with pytest.raises(ValueError, match="nothing would train"):
        scratch.freeze("embeddings")
