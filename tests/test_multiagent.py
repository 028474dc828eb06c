import warnings

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from recgym.envs import RecGenTask
from recgym.envs.multiagent import RecGenParallelEnv

SMALL = {"num_items": 300, "num_users": 200}
A0, A1, A2 = "recommender_0", "recommender_1", "recommender_2"


@pytest.fixture(scope="module")
def task():
    return RecGenTask("synthetic", representation="sid", dataset_kwargs=SMALL, vocab_size=500)


@pytest.fixture(scope="module")
def title_task():
    # Titles have outputs of different lengths: cooperative agents really wait for each other.
    return RecGenTask("synthetic", representation="title", dataset_kwargs=SMALL, vocab_size=800)


def other_item(task, *items):
    """An item whose token sequence differs from those of ``items``."""
    seqs = [task.tree.sequence_of(i) for i in items]
    return next(i for i in range(task.dataset.catalogue.num_items)
                if not any(np.array_equal(task.tree.sequence_of(i), s) for s in seqs))


def play(env, sequences):
    """Step every agent through its own token sequence; returns the per-step outputs."""
    history, t = [], 0
    while env.agents:
        actions = {a: int(sequences[a][t]) for a in env.agents if t < len(sequences[a])}
        history.append(env.step(actions))
        t += 1
    return history


@pytest.mark.parametrize("mode", ["competitive", "cooperative"])
@pytest.mark.parametrize("num_agents", [1, 3])
def test_parallel_api_test_passes_without_warnings(task, title_task, mode, num_agents):
    for t in (task, title_task):
        env = RecGenParallelEnv(t, num_agents=num_agents, mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PettingZoo itself emits none here
            # ... but its probe reset(options={"options": 1}) gets our unknown-key warning, and only that.
            probe = r"unknown reset options \['options'\] for RecGenParallelEnv"
            warnings.filterwarnings("ignore", message=probe)
            parallel_api_test(env, num_cycles=50)


def test_spaces_and_observations(task):
    env = RecGenParallelEnv(task, num_agents=2)
    assert env.possible_agents == [A0, A1]
    assert env.observation_space(A0) is env.observation_space(A0)
    assert env.action_space(A1).n == task.vocab_size
    obs, infos = env.reset(options={"row": 4})
    assert env.agents == [A0, A1]
    for agent in env.agents:
        assert env.observation_space(agent).contains(obs[agent])
        assert obs[agent]["action_mask"].dtype == np.int8
        assert np.array_equal(obs[agent]["action_mask"], task.tree.mask([task.tree.root])[0])
        assert infos[agent]["row"] == 4 and infos[agent]["target"] == task.request(4).target
    assert obs[A0]["action_mask"] is not obs[A1]["action_mask"]
    obs, infos = env.reset(options={"history": [3, 5], "target": 7})
    assert obs[A1]["history"][:2].tolist() == [3, 5] and infos[A1]["row"] == -1


def test_competitive_rewards_by_hand(task):
    hit, miss = 2.0, -1.0
    scored = RecGenTask(task.dataset, tokenizer=task.items, representation="sid", hit_reward=hit,
                        miss_reward=miss)
    env = RecGenParallelEnv(scored, num_agents=2, mode="competitive")
    _, infos = env.reset(options={"row": 11})
    target = infos[A0]["target"]
    wrong = other_item(scored, target)
    steps = play(env, {A0: scored.tree.sequence_of(target), A1: scored.tree.sequence_of(wrong)})
    for _, rewards, terminations, _, _ in steps[:-1]:
        assert rewards == {A0: 0.0, A1: 0.0} and not any(terminations.values())
    obs, rewards, terminations, truncations, infos = steps[-1]
    assert rewards == {A0: hit, A1: miss}
    assert terminations == {A0: True, A1: True} and truncations == {A0: False, A1: False}
    assert infos[A0]["hit"] and target in infos[A0]["generated_items"]
    assert not infos[A1]["hit"] and wrong in infos[A1]["generated_items"]
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})


def test_competitive_agents_leave_independently_and_invalid_tokens_miss(task):
    env = RecGenParallelEnv(task, num_agents=2, mode="competitive")
    obs, infos = env.reset(seed=3)
    bad = int(np.flatnonzero(obs[A0]["action_mask"] == 0)[0])
    good = int(np.flatnonzero(obs[A1]["action_mask"])[0])
    obs, rewards, terminations, _, infos = env.step({A0: bad, A1: good})
    assert terminations == {A0: True, A1: False} and rewards == {A0: 0.0, A1: 0.0}
    assert infos[A0]["invalid_action"] and len(infos[A0]["generated_items"]) == 0 and not infos[A0]["hit"]
    assert "generated_items" not in infos[A1]
    assert env.agents == [A1]
    with pytest.raises(ValueError, match="not live"):
        env.step({A0: good, A1: good})
    with pytest.raises(ValueError, match="no action"):
        env.step({})
    while env.agents:
        obs, rewards, terminations, _, infos = env.step({A1: int(np.flatnonzero(obs[A1]["action_mask"])[0])})
        assert set(rewards) == {A1}
    assert terminations == {A1: True} and not infos[A1]["invalid_action"]


def test_cooperative_duplicate_penalty_by_hand(task):
    env = RecGenParallelEnv(task, num_agents=3, mode="cooperative")
    _, infos = env.reset(options={"row": 11})
    target = infos[A0]["target"]
    wrong = other_item(task, target)
    seq_t, seq_w = task.tree.sequence_of(target), task.tree.sequence_of(wrong)
    # Two agents write the target: a hit, minus 0.5 for the one duplicate.
    *_, (_, rewards, terminations, _, infos) = play(env, {A0: seq_w, A1: seq_t, A2: seq_t})
    assert rewards == dict.fromkeys([A0, A1, A2], 1.0 - 0.5) and all(terminations.values())
    assert [infos[a]["duplicate"] for a in (A0, A1, A2)] == [False, False, True]
    assert all(infos[a]["slate_hit"] for a in (A0, A1, A2))
    assert [infos[a]["hit"] for a in (A0, A1, A2)] == [False, True, True]
    # Three copies of a miss: 0 - 2 * penalty; a custom penalty.
    env = RecGenParallelEnv(task, num_agents=3, mode="cooperative", duplicate_penalty=0.25)
    env.reset(options={"row": 11})
    *_, (_, rewards, _, _, infos) = play(env, {A0: seq_w, A1: seq_w, A2: seq_w})
    assert rewards == dict.fromkeys([A0, A1, A2], 0.0 - 2 * 0.25)
    assert not infos[A0]["slate_hit"]
    # Distinct items, one hit: the full hit reward for everyone.
    env.reset(options={"row": 11})
    third = task.tree.sequence_of(other_item(task, target, wrong))
    *_, (_, rewards, _, _, _) = play(env, {A0: seq_w, A1: seq_t, A2: third})
    assert rewards == dict.fromkeys([A0, A1, A2], 1.0)


def test_cooperative_finished_agents_wait_for_the_team(task):
    env = RecGenParallelEnv(task, num_agents=2, mode="cooperative")
    obs, infos = env.reset(options={"row": 2})
    target = infos[A0]["target"]
    bad = int(np.flatnonzero(obs[A0]["action_mask"] == 0)[0])
    seq = task.tree.sequence_of(target)
    # Agent 0 writes an invalid token: it is finished (no item) but waits for the shared reward.
    obs, rewards, terminations, _, infos = env.step({A0: bad, A1: int(seq[0])})
    assert rewards == {A0: 0.0, A1: 0.0} and terminations == {A0: False, A1: False}
    assert infos[A0]["invalid_action"] and infos[A0]["waiting"] and "waiting" not in infos[A1]
    assert env.agents == [A0, A1]
    assert np.flatnonzero(obs[A0]["action_mask"]).tolist() == [env.wait_token]
    # A waiting agent's action is ignored, whatever it is, and may be left out.
    obs, rewards, *_ = env.step({A0: bad, A1: int(seq[1])})
    for token in seq[2:]:
        obs, rewards, terminations, _, infos = env.step({A1: int(token)})
    assert all(terminations.values()) and env.agents == []
    assert rewards == {A0: 1.0, A1: 1.0}  # the slate hit; an invalid output is no duplicate
    assert infos[A0]["duplicate"] is False and infos[A0]["waiting"] is False


def test_reward_fn_cooperative_takes_the_best_item(task):
    fn_task = RecGenTask(task.dataset, tokenizer=task.items, representation="sid",
                         reward_fn=lambda items, target, request: float(items[0]) / 1000)
    env = RecGenParallelEnv(fn_task, num_agents=2, mode="cooperative", duplicate_penalty=0.0)
    env.reset(options={"row": 0})
    *_, (_, rewards, _, _, _) = play(env, {A0: task.tree.sequence_of(10), A1: task.tree.sequence_of(250)})
    assert rewards == {A0: 0.25, A1: 0.25}


def test_determinism_under_seed(task):
    def rollout(seed):
        env = RecGenParallelEnv(task, num_agents=3, mode="cooperative")
        obs, infos = env.reset(seed=seed)
        out = [infos[A0]["row"]]
        while env.agents:
            actions = {a: env.action_space(a).sample(mask=obs[a]["action_mask"]) for a in env.agents}
            obs, rewards, *_ = env.step(actions)
            out.append((sorted(actions.items()), sorted(rewards.items())))
        return out, env.state().tolist()

    assert rollout(5) == rollout(5)
    assert rollout(5) != rollout(6)


def test_render_and_argument_errors(task):
    env = RecGenParallelEnv(task, num_agents=2, render_mode="ansi")
    assert "reset" in env.render()
    env.reset(seed=0)
    text = env.render()
    assert A0 in text and A1 in text and "generating" in text and "target" in text
    assert RecGenParallelEnv(task).render() is None
    with pytest.raises(ValueError, match="mode"):
        RecGenParallelEnv(task, mode="zero-sum")
    with pytest.raises(ValueError, match="num_agents"):
        RecGenParallelEnv(task, num_agents=0)
    with pytest.raises(ValueError, match="either task"):
        RecGenParallelEnv(task, representation="sid")


# -- bad input: clear errors naming the argument, never a silent wrong result (issue 15, item 10) --

@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"duplicate_penalty": float("nan")}, ValueError, "duplicate_penalty must be a finite number, got nan"),
    ({"duplicate_penalty": float("inf")}, ValueError, "duplicate_penalty must be a finite number, got inf"),
    ({"duplicate_penalty": -0.5}, ValueError, "duplicate_penalty must be >= 0"),
    ({"duplicate_penalty": "0.5"}, TypeError, "duplicate_penalty must be a number"),
    ({"num_agents": 1.5}, TypeError, "num_agents must be an int, got 1.5"),
    ({"num_agents": True}, TypeError, "num_agents must be an int, got True"),
    ({"num_agents": 0}, ValueError, "num_agents must be >= 1"),
    ({"mode": "coop"}, ValueError, "mode must be one of"),
    ({"render_mode": "human"}, ValueError, "render_mode must be one of"),
])
def test_bad_constructor_arguments(task, kwargs, error, match):
    with pytest.raises(error, match=match):
        RecGenParallelEnv(task, **kwargs)


def test_unknown_reset_options_warn_listing_the_known_keys(task):
    env = RecGenParallelEnv(task)
    with pytest.warns(UserWarning, match=r"unknown reset options \['rwo'\] for RecGenParallelEnv \(did you "
                                         r"mean 'row'\?\); known options: \['history', 'row', 'target'\]"):
        _, infos = env.reset(seed=0, options={"rwo": 1})
    assert infos[A0]["row"] == env.reset(seed=0)[1][A0]["row"]  # the unknown key changed nothing


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"row": 1.9}, TypeError, r"options\['row'\] must be an int"),
    ({"history": "123", "target": 4}, TypeError, r"options\['history'\] must be a sequence"),
])
def test_bad_reset_options(task, options, error, match):
    with pytest.raises(error, match=match):
        RecGenParallelEnv(task).reset(options=options)
