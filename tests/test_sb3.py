import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from recgym.envs import RecGenEnv, RecGenTask
from recgym.envs.sb3 import CompactActions, CompactObservation, make_sb3_env

SMALL = {"num_items": 300, "num_users": 300}


@pytest.fixture(scope="module")
def task():
    return RecGenTask("synthetic", representation="sid", dataset_kwargs=SMALL, vocab_size=500)


@pytest.fixture
def one_torch_thread():
    # A tiny MLP gains nothing from intra-op threads, and on a busy 2-core machine torch's thread pool
    # made each small op take milliseconds (measured: tanh on 128 floats, 2 µs vs 8 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kwargs", [{}, {"history_items": 3}, {"item_tokens": False}, {"item_ids": False}])
def test_check_env_passes_without_warnings(task, kwargs):
    env = make_sb3_env(task, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


def test_compact_mask_matches_token_mask(task):
    env = make_sb3_env(task)
    base = env.unwrapped
    to_token = env.get_wrapper_attr("compact_to_token")
    to_compact = env.get_wrapper_attr("token_to_compact")
    assert np.array_equal(to_token, task.tree.tokens_in_tree)
    assert env.action_space.n == len(task.tree.tokens_in_tree) < task.vocab_size
    assert np.array_equal(to_compact[to_token], np.arange(len(to_token)))
    assert (np.delete(to_compact, to_token) == -1).all()
    rng = np.random.default_rng(0)
    d = task.max_response_len
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        done, t = False, 0
        while not done:
            mask = get_action_masks(env)
            tokens = base.action_masks()
            assert mask.dtype == np.bool_ and mask.shape == (env.action_space.n,)
            assert np.array_equal(mask, tokens[to_token]) and mask.sum() == tokens.sum()
            assert np.array_equal(info["action_mask"], mask.astype(np.int8))
            action = int(rng.choice(np.flatnonzero(mask)))
            obs, reward, done, _, info = env.step(action)
            assert env.observation_space.contains(obs)
            assert obs[-d + t] == action + 1  # the prefix part holds compact ids + 1
            t += 1
        assert not info["invalid_action"] and len(info["generated_items"]) == 1
    assert get_action_masks(env).all()  # ended: any action (step() would refuse)


def test_observation_contents(task):
    env = make_sb3_env(task, history_items=2)
    to_compact = env.get_wrapper_attr("token_to_compact")
    d = task.max_response_len
    obs, _ = env.reset(options={"history": [4, 7], "target": 9})
    assert env.observation_space.nvec.tolist() == ([301] + [len(task.tree.tokens_in_tree) + 1] * d) * 2 + [
        len(task.tree.tokens_in_tree) + 1] * d
    item7, item4, prefix = obs[: d + 1], obs[d + 1 : 2 * d + 2], obs[2 * d + 2 :]
    assert item7[0] == 8 and item4[0] == 5  # most recent first, ids + 1
    assert np.array_equal(item7[1:], to_compact[task.tree.sequence_of(7)] + 1)
    assert np.array_equal(item4[1:], to_compact[task.tree.sequence_of(4)] + 1)
    assert (prefix == 0).all()
    first = int(np.flatnonzero(env.get_wrapper_attr("action_masks")())[0])
    obs, *_ = env.step(first)
    assert obs[2 * d + 2] == first + 1 and (obs[2 * d + 3 :] == 0).all()
    obs, _ = env.reset(options={"history": [], "target": 9})
    assert (obs[: 2 * d + 2] == 0).all()
    with pytest.raises(ValueError, match="history_items"):
        CompactObservation(RecGenEnv(task), history_items=0)
    with pytest.raises(ValueError, match="ids, their tokens or both"):
        CompactObservation(RecGenEnv(task), item_ids=False, item_tokens=False)
    tokens_only = make_sb3_env(task, history_items=2, item_ids=False)
    obs, _ = tokens_only.reset(options={"history": [4, 7], "target": 9})
    assert np.array_equal(obs, np.delete(env.reset(options={"history": [4, 7], "target": 9})[0], [0, d + 1]))
    with pytest.raises(TypeError, match="RecGenEnv"):
        CompactActions(gym.make("CartPole-v1"))


@pytest.mark.parametrize("kwargs", [{}, {"item_tokens": False}, {"item_ids": False}])
def test_encode_matches_observation_for_batches_of_states(task, kwargs):
    env = make_sb3_env(task, history_items=3, **kwargs)
    to_token = env.get_wrapper_attr("compact_to_token")
    ex, d = task.examples, task.max_response_len
    rng = np.random.default_rng(0)
    rows, observed, prefixes, counts = [], [], [], []
    for row in range(6):
        obs, _ = env.reset(options={"row": row})
        actions, done = [], False
        while True:
            rows.append(row)
            observed.append(obs)
            prefixes.append(np.pad(to_token[actions], (0, d - len(actions)), constant_values=-1))
            counts.append(len(actions))
            if done:
                break
            actions.append(int(rng.choice(np.flatnonzero(get_action_masks(env)))))
            obs, _, done, _, _ = env.step(actions[-1])
    encoded = env.encode(ex.history[rows], ex.history_len[rows], np.array(prefixes), counts)
    assert np.array_equal(encoded, np.array(observed))
    assert env.observation_space.contains(encoded[0])


def test_invalid_compact_action_ends_the_episode(task):
    env = make_sb3_env(task)
    env.reset(seed=0)
    bad = int(np.flatnonzero(~env.get_wrapper_attr("action_masks")())[0])
    _, reward, done, _, info = env.step(bad)
    assert done and reward == task.miss_reward and info["invalid_action"]
    with pytest.raises(ValueError, match="outside"):
        env.reset(seed=0)
        env.step(env.action_space.n)


def hit_rate(env, policy, rows, rng):
    hits = 0
    for row in rows:
        obs, info = env.reset(options={"row": int(row)})
        done = False
        while not done:
            obs, _, done, _, info = env.step(policy(obs, get_action_masks(env), rng))
        hits += info["hit"]
    return hits / len(rows)


@pytest.mark.slow
def test_maskable_ppo_beats_a_random_valid_policy(task, one_torch_thread):
    valid = RecGenTask(task.dataset, tokenizer=task.items, split="valid", representation="sid")
    eval_env = make_sb3_env(valid)
    rows = np.arange(valid.num_requests)

    def random_policy(obs, mask, rng):
        return int(rng.choice(np.flatnonzero(mask)))

    rng = np.random.default_rng(0)
    random_hits = np.mean([hit_rate(eval_env, random_policy, rows, rng) for _ in range(3)])

    train_env = DummyVecEnv([lambda: make_sb3_env(task) for _ in range(8)])
    # Episodes are 4 tokens with one terminal reward: no discounting, Monte-Carlo advantages.
    model = MaskablePPO("MlpPolicy", train_env, n_steps=256, batch_size=256, n_epochs=4, gamma=1.0,
                        gae_lambda=1.0, learning_rate=3e-3, ent_coef=0.03, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [128]})
    start = time.perf_counter()
    model.learn(total_timesteps=24_000)  # seed 0: hit rate .035 against random .004 here
    seconds = time.perf_counter() - start

    def ppo_policy(obs, mask, rng):
        return int(model.predict(obs, action_masks=mask, deterministic=True)[0])

    ppo_hits = hit_rate(eval_env, ppo_policy, rows, rng)
    print(f"MaskablePPO hit rate {ppo_hits:.4f} vs random {random_hits:.4f} ({seconds:.0f} s of training)")
    assert ppo_hits >= 2 * random_hits and ppo_hits >= random_hits + 0.02


# -- bad input: clear errors naming the argument, never a silent truncation (issue 15, item 10) --

@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"history_items": 1.5}, TypeError, "history_items must be an int, got 1.5"),
    ({"history_items": True}, TypeError, "history_items must be an int, got True"),
    ({"history_items": 11}, ValueError, r"history_items must be in 1\.\.10, got 11"),
    ({"item_tokens": "no"}, TypeError, "item_tokens must be True or False"),
    ({"item_ids": None}, TypeError, "item_ids must be True or False"),
])
def test_bad_wrapper_arguments(task, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_sb3_env(task, **kwargs)


def test_compact_conversions_refuse_floats_and_out_of_range_ids(task):
    env = make_sb3_env(task)
    actions = env.env  # the CompactActions wrapper
    c = len(actions.compact_to_token)
    with pytest.raises(TypeError, match="actions must hold ints"):
        actions.to_tokens([0.5])
    with pytest.raises(ValueError, match=rf"actions must hold values in 0\.\.{c - 1}, got {c}"):
        actions.to_tokens([0, c])
    with pytest.raises(ValueError, match=rf"tokens must hold values in 0\.\.{task.vocab_size - 1}, got -1"):
        actions.to_compact([-1])
    with pytest.raises(TypeError, match="history must hold ints"):
        env.encode([[4.5, 7.0]], [2], np.full((1, 4), -1), [0])
    with pytest.raises(TypeError, match="generated_len must hold ints"):
        env.encode([[4, 7]], [2], np.full((1, 4), -1), [0.5])
