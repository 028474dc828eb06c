"""KV caches for decoding: reserved room, the shared prefix and its attention."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from agents.model.kvcache import reserved_cache, shared_prefix_cache, supports_shared_prefix
from agents.model.policy import LLMPolicy, make_rollout_env
from recgym.data import make_synthetic
from recgym.envs import RecGenTask

SIZES = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2)  # 3 query heads per KV head (GQA), as SmolLM2 / Qwen2


@pytest.fixture(scope="module")
def task():
    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    return RecGenTask(ds, split="train", representation="title", vocab_size=400)


def policy_of(kind, task, **config):
    torch.manual_seed(0)
    cls, cfg = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "llama": (LlamaForCausalLM, LlamaConfig)}[kind]
    items = task.items
    model = cls(cfg(vocab_size=items.vocab_size, pad_token_id=items.pad_token_id, **SIZES, **config))
    return LLMPolicy(model.eval(), task.items, device="cpu")


def test_reserved_cache_writes_decoding_steps_in_place():
    """Keys / values equal a concatenating cache's; decoding steps and row drops keep one buffer."""
    rng = torch.Generator().manual_seed(0)
    reserved, plain = reserved_cache(4), DynamicCache()
    prompt = torch.randn(2, 3, 5, 8, generator=rng)  # (rows, kv heads, tokens, head dim)
    for cache in (reserved, plain):
        cache.update(prompt, -prompt, 0)
        cache.batch_repeat_interleave(3)
    layer = reserved.layers[0]
    assert layer.capacity == 5 + 4
    buffer = layer.keys.data_ptr()
    for rows in (6, 6, 4, 4):
        if rows < layer.keys.shape[0]:  # drop rows, as rollouts do when episodes end: one copy
            for cache in (reserved, plain):
                cache.batch_select_indices(torch.tensor([0, 2, 3, 5]))
            buffer = layer.keys.data_ptr()
        token = torch.randn(rows, 3, 1, 8, generator=rng)
        keys, values = reserved.update(token, 2 * token, 0)
        want_keys, want_values = plain.update(token, 2 * token, 0)
        assert torch.equal(keys, want_keys) and torch.equal(values, want_values)
        assert layer.keys.data_ptr() == buffer  # written into the room, not reallocated
    assert reserved.get_seq_length() == plain.get_seq_length() == 9
    token = torch.randn(4, 3, 1, 8, generator=rng)
    keys, _ = reserved.update(token, token, 0)  # past the room: grows (a copy), still correct
    assert torch.equal(keys, plain.update(token, token, 0)[0]) and layer.capacity == 10 + 4


def test_shared_prefix_cache_keeps_one_prompt_copy_and_maps_rows():
    cache = shared_prefix_cache(4)
    prompt = torch.randn(2, 2, 5, 8)
    cache.update(prompt, prompt, 0)
    layer = cache.layers[0]
    cache.batch_repeat_interleave(3)  # 3 rows per prompt
    assert layer.group.tolist() == [0, 0, 0, 1, 1, 1] and layer.prompt_keys.data_ptr() == prompt.data_ptr()
    own = torch.randn(6, 2, 1, 8)
    keys, _ = cache.update(own, own, 0)  # a decoding step returns the rows' own tokens only
    assert torch.equal(keys, own) and cache.get_seq_length() == 6
    cache.batch_select_indices(torch.tensor([1, 4, 5]))  # rows end: their prompts stay shared
    assert layer.group.tolist() == [0, 1, 1] and torch.equal(layer.keys, own[[1, 4, 5]])
    cache.reorder_cache(torch.tensor([2, 2, 0]))  # beams: children of row 2, 2 and 0
    assert layer.group.tolist() == [1, 1, 0] and layer.prompt_keys.shape[0] == 2


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_shared_prefix_decoding_equals_per_row_prompt_copies(task, kind):
    """Rollouts (rows ending at different lengths) and beams (rows reordered every step) over
    left-padded prompts of different lengths: the same tokens, log-probs and beam scores as with
    every row holding its own copy of the prompt."""
    policy = policy_of(kind, task)
    assert supports_shared_prefix(policy.model)
    envs = make_rollout_env(task, 20)
    prompts, lens = task.prompt_tokens(np.arange(4))
    assert len(set(lens.tolist())) > 1  # the prompts are padded
    out = {}
    for shared in (True, False):
        policy.shared_prefix = shared
        ro = policy.rollout(envs, group_size=5, generator=torch.Generator().manual_seed(3), seed=2,
                            temperature=1.5)
        out[shared] = ro, policy.beam_search(prompts, lens, width=8)
    (ro, (nodes, scores)), (ro_ref, (nodes_ref, scores_ref)) = out[True], out[False]
    assert len(set(ro.mask.sum(dim=1).tolist())) > 1  # rows ended at different steps
    assert torch.equal(ro.tokens, ro_ref.tokens)
    torch.testing.assert_close(ro.logprobs, ro_ref.logprobs, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(nodes, nodes_ref)
    np.testing.assert_allclose(scores, scores_ref, atol=1e-4, rtol=1e-5)
    assert policy.model.config._attn_implementation == "sdpa"  # restored afterwards


def test_models_outside_the_shared_prefix_decode_as_before(task):
    eager = policy_of("qwen2", task, attn_implementation="eager")
    sliding = policy_of("qwen2", task, use_sliding_window=True, sliding_window=4096)
    assert not supports_shared_prefix(eager.model) and not supports_shared_prefix(sliding.model)
    envs = make_rollout_env(task, 6)
    ro = eager.rollout(envs, group_size=3, generator=torch.Generator().manual_seed(0), seed=0)
    assert (ro.terminal >= 0).all()
