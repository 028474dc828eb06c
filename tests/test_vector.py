import gymnasium as gym
import numpy as np
import pytest

import recgym  # noqa: F401
from recgym.envs import RecGenEnv, RecGenTask
from recgym.envs.vector import RecGenVectorEnv

SMALL = {"num_items": 300, "num_users": 200}


@pytest.fixture(scope="module")
def task():
    return RecGenTask("synthetic", representation="title", dataset_kwargs=SMALL, vocab_size=800)


def run_until_done(envs, info, rng):
    done = np.zeros(envs.num_envs, bool)
    total = np.zeros(envs.num_envs)
    steps = 0
    while not done.all():
        actions = envs.tree.sample_tokens(np.where(done, 0, info["state"]), rng)
        _, rewards, terminated, truncated, info = envs.step(actions)
        assert not truncated.any()
        assert (rewards[~info["active"]] == 0).all()
        done |= terminated
        total += rewards
        steps += 1
    return total, info, steps


def test_make_vec_uses_the_native_vector_env(task):
    envs = gym.make_vec("RecGen-Synthetic-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        dataset_kwargs=SMALL, vocab_size=800)
    assert isinstance(envs.unwrapped if hasattr(envs, "unwrapped") else envs, RecGenVectorEnv)
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert info["action_mask"].shape == (4, envs.unwrapped.task.vocab_size)


def test_groups_repeat_each_request_consecutively(task):
    envs = RecGenVectorEnv(8, task, autoreset_mode="disabled", dense_masks=False)
    obs, info = envs.reset(seed=0, options={"group_size": 4})
    rows = info["row"]
    assert (rows[:4] == rows[0]).all() and (rows[4:] == rows[4]).all()
    assert (obs["prompt_ids"][:4] == obs["prompt_ids"][0]).all()
    _, info = envs.reset(options={"group_size": 2, "rows": [5, 6, 7, 8]})
    assert info["row"].tolist() == [5, 5, 6, 6, 7, 7, 8, 8]
    with pytest.raises(ValueError, match="group_size"):
        envs.reset(options={"group_size": 3})
    with pytest.raises(ValueError, match="unknown reset options"):
        envs.reset(options={"grp": 2})


def test_disabled_mode_episodes_end_independently_and_stay_ended(task):
    envs = RecGenVectorEnv(16, task, autoreset_mode="disabled", dense_masks=False)
    _, info = envs.reset(seed=1)
    total, info, steps = run_until_done(envs, info, np.random.default_rng(0))
    assert steps == info["generated_len"].max() and len(set(info["generated_len"].tolist())) > 1
    assert (total == info["hit"]).all() and not info["invalid_action"].any()
    # Further steps change nothing for finished slots.
    _, rewards, terminated, _, info2 = envs.step(np.zeros(16, np.int64))
    assert terminated.all() and (rewards == 0).all() and not info2["active"].any()
    # A partial reset restarts only the masked slots.
    mask = np.zeros(16, bool)
    mask[:3] = True
    _, info3 = envs.reset(options={"reset_mask": mask})
    assert (info3["generated_len"][:3] == 0).all() and (info3["generated_len"][3:] > 0).all()


def test_vector_env_matches_single_envs_step_for_step(task):
    envs = RecGenVectorEnv(6, task, autoreset_mode="disabled")
    single = [RecGenEnv(task) for _ in range(6)]
    obs, info = envs.reset(options={"rows": [0, 1, 2, 3, 4, 5]})
    for r, env in enumerate(single):
        env.reset(options={"row": r})
    rng = np.random.default_rng(3)
    done = np.zeros(6, bool)
    while not done.all():
        actions = envs.tree.sample_tokens(np.where(done, 0, info["state"]), rng)
        obs, rewards, term, _, info = envs.step(actions)
        for i, env in enumerate(single):
            if done[i]:
                continue
            o, r, d, _, inf = env.step(int(actions[i]))
            assert r == rewards[i] and d == term[i]
            for key in o:
                np.testing.assert_array_equal(o[key], obs[key][i])
            np.testing.assert_array_equal(inf["action_mask"].astype(bool), envs.action_masks()[i] | d)
        done |= term


def test_next_step_autoreset(task):
    envs = RecGenVectorEnv(4, task)  # next_step by default
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    _, info = envs.reset(seed=2)
    rng = np.random.default_rng(0)
    ended = np.zeros(4, bool)
    for _ in range(40):
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in info["action_mask"]])
        was_done = ended.copy()
        _, rewards, ended, _, info = envs.step(actions)
        # A slot that ended last step was reset now: its action was not used.
        assert (info["active"] == ~was_done).all()
        assert (info["generated_len"][was_done] == 0).all()


@pytest.mark.parametrize("autoreset_mode", ["next_step", "disabled"])
def test_reused_masks_equal_fresh_masks_at_every_step(task, autoreset_mode):
    fresh = RecGenVectorEnv(6, task, autoreset_mode=autoreset_mode)
    reuse = RecGenVectorEnv(6, task, autoreset_mode=autoreset_mode, dense_masks="reuse")
    _, a = fresh.reset(seed=3, options={"group_size": 2})
    _, b = reuse.reset(seed=3, options={"group_size": 2})
    buffer = b["action_mask"]
    rng = np.random.default_rng(0)
    for _ in range(30):  # slots finish, (auto)reset and start over: rows go stale and all-ones
        np.testing.assert_array_equal(a["action_mask"], b["action_mask"])
        np.testing.assert_array_equal(fresh.action_masks(), reuse.action_masks())
        assert b["action_mask"] is buffer  # one array, rewritten in place
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in a["action_mask"]])
        _, _, _, _, a = fresh.step(actions)
        _, _, _, _, b = reuse.step(actions)
    with pytest.raises(ValueError, match="dense_masks must be True, False or 'reuse'"):
        RecGenVectorEnv(2, task, dense_masks="yes")


def test_invalid_actions_and_bad_input(task):
    envs = RecGenVectorEnv(2, task, autoreset_mode="disabled")
    _, info = envs.reset(seed=0)
    bad = np.array([int(np.flatnonzero(info["action_mask"][0] == 0)[0])] * 2)
    _, rewards, term, _, info = envs.step(bad)
    assert term.all() and info["invalid_action"].all() and (rewards == task.miss_reward).all()
    for actions in (np.zeros(3, np.int64), np.zeros(2), np.array([-1, 0]), np.array([0, 10**9])):
        with pytest.raises(ValueError):
            envs.step(actions)
    strict = RecGenVectorEnv(2, task, strict=True)
    strict.reset(seed=0)
    with pytest.raises(ValueError, match="strict"):
        strict.step(bad)


def test_custom_requests(task):
    envs = RecGenVectorEnv(2, task, autoreset_mode="disabled", dense_masks=False)
    obs, info = envs.reset(options={"requests": [([1, 2], 3), ([4], 5)]})
    assert info["row"].tolist() == [-1, -1] and info["target"].tolist() == [3, 5]
    assert obs["history"][0, :2].tolist() == [1, 2] and obs["history_len"].tolist() == [2, 1]
    seq = task.tree.sequence_of(5)
    for t in range(len(seq)):
        actions = np.array([task.tree.sequence_of(3)[min(t, len(task.tree.sequence_of(3)) - 1)], seq[t]])
        _, rewards, term, _, info = envs.step(actions)
    assert info["hit"][1] and rewards[1] == 1.0


# -- bad input: clear errors naming the argument, never a silent wrong result (issue 15, item 10) --

@pytest.mark.parametrize(("options", "error", "match"), [
    ({"group": 2}, ValueError, r"unknown reset options \['group'\].*did you mean 'group_size'.*"
                             r"known options: \['group_size', 'requests', 'reset_mask', 'rows'\]"),
    ({"group_size": 2.7}, TypeError, r"options\['group_size'\] must be an int, got 2.7"),
    ({"group_size": True}, TypeError, r"options\['group_size'\] must be an int, got True"),
    ({"group_size": 0}, ValueError, r"options\['group_size'\] must be >= 1"),
    ({"rows": [1.5, 2.2, 3.9, 4.1]}, TypeError, r"options\['rows'\] must hold ints"),
    ({"rows": [True, False, True, False]}, TypeError, r"options\['rows'\] must hold ints"),
    ({"rows": "1234"}, TypeError, r"options\['rows'\] must be a sequence of ints, got the string"),
    ({"rows": [1, 2, 3, 10**7]}, ValueError, r"options\['rows'\] must hold values in 0\.\.\d+, got 10000000"),
    ({"rows": [1, 2, 3]}, ValueError, r"options\['rows'\] must have 4 entries, got 3"),
    ({"requests": [("12", 3)] * 4}, TypeError, r"options\['requests'\]\[0\] history must be a sequence"),
    ({"requests": [([1.5], 3)] * 4}, TypeError, r"options\['requests'\]\[0\] history must hold ints"),
    ({"requests": [([1], 3)] * 3 + [([1], 3.0)]}, TypeError, r"options\['requests'\]\[3\] target"),
    ({"requests": [1, 2, 3, 4]}, TypeError, r"options\['requests'\]\[0\] must be a \(history, target\) pair"),
    ({"requests": [([1], 3)] * 4, "rows": [1, 2, 3, 4]}, ValueError, r"'requests' .*not both"),
])
def test_bad_reset_options_are_errors_that_change_nothing(task, options, error, match):
    envs = RecGenVectorEnv(4, task, autoreset_mode="disabled", dense_masks=False)
    _, info = envs.reset(seed=0)
    envs.step(envs.tree.sample_tokens(info["state"], np.random.default_rng(0)))
    before = [a.copy() for a in (envs.rows, envs.states, envs.generated_len, envs.done)]
    with pytest.raises(error, match=match):
        envs.reset(options=options)
    for old, new in zip(before, (envs.rows, envs.states, envs.generated_len, envs.done)):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"num_envs": 2.5}, TypeError, "num_envs must be an int, got 2.5"),
    ({"num_envs": True}, TypeError, "num_envs must be an int, got True"),
    ({"num_envs": "4"}, TypeError, "num_envs must be an int, got '4'"),
    ({"num_envs": 0}, ValueError, "num_envs must be >= 1, got 0"),
    ({"num_envs": -1}, ValueError, "num_envs must be >= 1, got -1"),
    ({"num_envs": 2, "strict": "no"}, TypeError, "strict must be True or False"),
    ({"num_envs": 2, "render_mode": "human"}, ValueError, "does not render"),
])
def test_bad_constructor_arguments(task, kwargs, error, match):
    with pytest.raises(error, match=match):
        RecGenVectorEnv(task=task, **kwargs)


def test_single_and_vector_env_share_one_options_check(task):
    """Both envs refuse unknown keys with the same message, each listing its own known keys."""
    messages = []
    for env in (RecGenEnv(task), RecGenVectorEnv(2, task)):
        with pytest.raises(ValueError) as err:
            env.reset(options={"seed": 3})
        messages.append(str(err.value))
    assert messages[0].startswith("unknown reset options ['seed'] for RecGenEnv")
    assert messages[1].startswith("unknown reset options ['seed'] for RecGenVectorEnv")
    assert all("; known options: [" in m for m in messages)
