import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import recgym  # noqa: F401  (registers the ids)
from recgym.envs import RecGenEnv, RecGenTask

SMALL = {"num_items": 300, "num_users": 200}


@pytest.fixture(scope="module", params=["title", "sid"])
def task(request):
    return RecGenTask("synthetic", representation=request.param, dataset_kwargs=SMALL, vocab_size=800)


def play(env, info, rng):
    total, done = 0.0, False
    while not done:
        action = int(rng.choice(np.flatnonzero(info["action_mask"])))
        _, reward, done, truncated, info = env.step(action)
        assert not truncated
        total += reward
    return total, info


def test_check_env_passes_without_warnings(task):
    env = RecGenEnv(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


def test_masked_play_always_ends_in_a_real_item_and_rewards_hits(task):
    env = RecGenEnv(task)
    rng = np.random.default_rng(0)
    hits = 0
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        assert info["prompt"].endswith("### Response:\n")
        total, info = play(env, info, rng)
        assert len(info["generated_items"]) >= 1 and not info["invalid_action"]
        assert info["hit"] == (info["target"] in info["generated_items"])
        assert total == (1.0 if info["hit"] else 0.0)
        hits += info["hit"]
    # Playing the target's own tokens always hits.
    obs, info = env.reset(options={"row": 3})
    for token in task.tree.sequence_of(info["target"]):
        obs, reward, done, _, info = env.step(int(token))
    assert done and info["hit"] and reward == 1.0


def test_observation_contents(task):
    env = RecGenEnv(task)
    obs, info = env.reset(options={"row": 5})
    ex = task.examples
    n = int(obs["history_len"])
    assert obs["history"][:n].tolist() == ex.history[5, :n].tolist()
    ids = obs["prompt_ids"][: int(obs["prompt_len"])].tolist()
    assert task.items.tokenizer.decode(ids) == info["prompt"]
    token = int(np.flatnonzero(info["action_mask"])[0])
    obs, *_ = env.step(token)
    assert obs["generated_len"] == 1 and obs["generated_ids"][0] == token
    assert env.observation_space.contains(obs)


def test_invalid_token_ends_with_miss_or_raises_when_strict(task):
    env = RecGenEnv(task)
    obs, info = env.reset(seed=1)
    bad = int(np.flatnonzero(info["action_mask"] == 0)[0])
    obs, reward, done, _, info = env.step(bad)
    assert done and reward == 0.0 and info["invalid_action"] and len(info["generated_items"]) == 0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(bad)
    strict = RecGenEnv(task, strict=True)
    strict.reset(seed=1)
    with pytest.raises(ValueError, match="strict"):
        strict.step(bad)


@pytest.mark.parametrize("action", [-1, 10**9, 1.5, "3", None, True])
def test_bad_actions_raise_value_error(task, action):
    env = RecGenEnv(task)
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(action)


def test_reset_is_deterministic_and_takes_custom_requests(task):
    env = RecGenEnv(task)
    a = [env.reset(seed=7)[1]["row"] for _ in range(1)] + [env.reset()[1]["row"] for _ in range(3)]
    b = [env.reset(seed=7)[1]["row"] for _ in range(1)] + [env.reset()[1]["row"] for _ in range(3)]
    assert a == b
    obs, info = env.reset(options={"history": [1, 2, 3], "target": 4})
    assert info["row"] == -1 and info["target"] == 4 and obs["history"][:3].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="0..299"):
        env.reset(options={"history": [1, 999], "target": 4})
    with pytest.raises(ValueError, match="row"):
        env.reset(options={"row": 10**7})


def test_reward_config_and_user_reward_function():
    seen = []

    def reward_fn(items, target, request):
        seen.append((items.tolist(), target, request["history"]))
        return 0.5

    task = RecGenTask("synthetic", representation="sid", dataset_kwargs=SMALL, vocab_size=500,
                      hit_reward=2.0, miss_reward=-1.0)
    env = RecGenEnv(task)
    _, info = env.reset(seed=0)
    total, info = play(env, info, np.random.default_rng(1))
    assert total == (2.0 if info["hit"] else -1.0)
    env = RecGenEnv(dataset=task.dataset, tokenizer=task.items, reward_fn=reward_fn)
    _, info = env.reset(seed=0)
    total, info = play(env, info, np.random.default_rng(1))
    assert total == 0.5 and len(seen) == 1 and seen[0][1] == info["target"]


def test_render_ansi_shows_prompt_output_and_target(task):
    env = RecGenEnv(task, render_mode="ansi")
    _, info = env.reset(options={"row": 0})
    env.step(int(np.flatnonzero(info["action_mask"])[0]))
    text = env.render()
    assert "history:" in text and "output:" in text and f"(item {info['target']})" in text
    with pytest.raises(ValueError, match="render_mode"):
        RecGenEnv(task, render_mode="human")


def test_action_masks_match_info_mask(task):
    env = RecGenEnv(task)
    _, info = env.reset(seed=3)
    np.testing.assert_array_equal(env.action_masks(), info["action_mask"].astype(bool))
    assert info["action_mask"].dtype == np.int8


def test_gym_make_by_id_and_module_prefix():
    env = gym.make("recgym:RecGen-Synthetic-v0", representation="sid", dataset_kwargs=SMALL,
                   vocab_size=500)
    obs, info = env.reset(seed=0)
    assert env.unwrapped.task.representation == "sid"
    env = gym.make("RecGen-v0", dataset="synthetic", dataset_kwargs=SMALL, vocab_size=500)
    assert env.unwrapped.task.dataset.catalogue.num_items == 300


def test_missing_dataset_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RECGYM_DATA_PATH", raising=False)
    with pytest.raises(FileNotFoundError, match="run `recgym data download goodreads-sprec`"):
        gym.make("RecGen-Goodreads-v0")


# -- bad input: clear errors naming the argument, never a silent wrong result (issue 15, item 10) --

@pytest.mark.parametrize(("options", "error", "match"), [
    ({"rwo": 3}, ValueError, r"unknown reset options \['rwo'\].*did you mean 'row'.*"
                             r"known options: \['history', 'row', 'target'\]"),
    ({"row": 1.9}, TypeError, r"options\['row'\] must be an int, got 1.9"),
    ({"row": np.float64(2.0)}, TypeError, r"options\['row'\] must be an int"),
    ({"row": True}, TypeError, r"options\['row'\] must be an int, got True"),
    ({"row": "3"}, TypeError, r"options\['row'\] must be an int, got '3'"),
    ({"history": [1.7], "target": 3}, TypeError, r"options\['history'\] must hold ints"),
    ({"history": "123", "target": 3}, TypeError, r"options\['history'\] must be a sequence.*string '123'"),
    ({"history": "abc", "target": 3}, TypeError, r"options\['history'\] must be a sequence.*string 'abc'"),
    ({"history": [True, 2], "target": 3}, TypeError, r"options\['history'\] must hold ints, not bools"),
    ({"history": 5, "target": 3}, TypeError, r"options\['history'\] must be a sequence"),
    ({"history": [[1, 2]], "target": 3}, ValueError, r"options\['history'\] must be 1-D"),
    ({"history": [1], "target": 3.5}, TypeError, r"options\['target'\] must be an int"),
    ({"history": [1], "target": True}, TypeError, r"options\['target'\] must be an int"),
    ({"history": [1], "target": 3, "row": 2}, ValueError, r"'row' or 'history' and 'target', not both"),
])
def test_bad_reset_options_are_errors_naming_the_option(task, options, error, match):
    env = RecGenEnv(task)
    with pytest.raises(error, match=match):
        env.reset(options=options)


def test_reset_options_must_be_a_dict_and_numpy_integers_are_welcome(task):
    env = RecGenEnv(task)
    with pytest.raises(TypeError, match="options must be a dict or None"):
        env.reset(options=[("row", 1)])
    _, info = env.reset(options={"row": np.int32(3)})
    assert info["row"] == 3 and info["target"] == task.request(3).target
    obs, info = env.reset(options={"history": np.array([1, 2], np.int16), "target": np.int64(4)})
    assert obs["history"][:3].tolist() == [1, 2, -1] and info["target"] == 4
    obs, _ = env.reset(options={"history": (), "target": 4})
    assert obs["history_len"] == 0


def test_strict_must_be_a_bool(task):
    with pytest.raises(TypeError, match="strict must be True or False, got 'no'"):
        RecGenEnv(task, strict="no")


def test_a_non_finite_user_reward_is_an_error_naming_reward_fn(task):
    env = RecGenEnv(dataset=task.dataset, tokenizer=task.items, reward_fn=lambda items, target, req: np.nan)
    _, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="reward_fn returned nan"):
        play(env, info, np.random.default_rng(0))
