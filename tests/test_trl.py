"""TRL interop (agents.integrations.trl, examples/trl_grpo.py): TRL's own GRPOTrainer on a recgym env.

Skipped where TRL is not installed (``pip install -e ".[trl]"``).
"""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

from agents.integrations.trl import RecGymReward, completion_states, prompt_dataset  # noqa: E402
from recgym.envs.vector import RecGenVectorEnv  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trl_grpo.py"


def env_rewards(task, rows, group, paths):
    """Total reward of each token path stepped through a vector env (slot i: ``paths[i]``)."""
    envs = RecGenVectorEnv(len(paths), task, autoreset_mode="disabled", dense_masks=False)
    envs.reset(seed=0, options={"rows": np.asarray(rows), "group_size": group})
    total = np.zeros(len(paths))
    for t in range(max(len(p) for p in paths)):  # a finished slot's later tokens are ignored
        actions = np.array([p[t] if t < len(p) else task.eos_token_id for p in paths])
        _, rewards, terminated, _, _ = envs.step(actions)
        total += rewards  # ranking pays a list's part to all its slots when its last one ends
    assert terminated.all()
    return total


def run_example(monkeypatch, tmp_path, *args):
    recorded = []
    call = RecGymReward.__call__

    def spy(self, *a, **kw):  # the completions TRL hands its reward function, and what it paid
        out = call(self, *a, **kw)
        recorded.append((kw["completion_ids"], kw["target"], kw["row"], out))
        return out

    monkeypatch.setattr(RecGymReward, "__call__", spy)
    monkeypatch.setattr(sys, "argv", ["trl_grpo.py", "--out", str(tmp_path), *args])
    built = runpy.run_path(str(EXAMPLE), run_name="trl_example")["main"]()
    return built, recorded


@pytest.mark.parametrize("reward", ["hit", "ranking"])
def test_example_trains_with_trl_and_pays_the_env_reward(monkeypatch, tmp_path, capsys, reward):
    built, recorded = run_example(monkeypatch, tmp_path, "--steps", "2", "--reward", reward,
                                  "--group-size", "4")
    assert built["trainer"].state.global_step == 2
    assert '"steps": 2' in capsys.readouterr().out
    task = built["task"]
    assert recorded
    for ids, targets, rows, paid in recorded:
        # constrained: every completion TRL sampled is a catalogue item
        assert (completion_states(task.tree, ids) >= 0).all()
        assert (np.asarray(targets) == task.examples.target[np.asarray(rows)]).all()
        expected = env_rewards(task, np.asarray(rows)[::4], 4, ids)
        np.testing.assert_allclose(paid, expected)


def test_free_generation_reports_the_invalid_rate(monkeypatch, tmp_path):
    built, recorded = run_example(monkeypatch, tmp_path, "--steps", "1", "--free")
    logs = [r for r in built["trainer"].state.log_history if "recgym/invalid_rate" in r]
    invalid = np.concatenate([completion_states(built["task"].tree, ids) < 0 for ids, *_ in recorded])
    assert logs and float(logs[0]["recgym/invalid_rate"]) == pytest.approx(invalid.mean())
    assert invalid.any()  # an untrained model writes mostly outside the catalogue


@pytest.mark.parametrize("reward", ["hit", "ranking", "rank_discounted"])
def test_reward_function_matches_the_vector_env(tiny_sid, reward):
    task = tiny_sid[0].with_reward(reward)
    group, rows = 4, np.array([0, 1, 2])
    targets = task.examples.target[rows]
    other = [int((t + 1) % task.dataset.catalogue.num_items) for t in targets]
    bad = next(t for t in range(task.vocab_size) if not task.tree.is_valid(0, t))
    paths = []
    for target, miss in zip(targets.tolist(), other):
        hit = task.tree.sequence_of(target).tolist()
        paths += [task.tree.sequence_of(miss).tolist(), hit, [bad], hit[:1] + [bad]]
    paths[8:12] = [paths[8]] * 4  # a list with no hit
    fn = RecGymReward(task, num_generations=group)
    paid = fn(prompts=[""] * len(paths), completions=[""] * len(paths), completion_ids=paths,
              target=np.repeat(targets, group).tolist())
    np.testing.assert_allclose(paid, env_rewards(task, rows, group, paths))
    assert fn.last_invalid.tolist() == [False, False, True, True] * 2 + [False] * 4
    assert fn.last_hits.sum() == 2
    # text completions (TRL's decoded strings, end token dropped) are paid the same
    texts = [task.items.tokenizer.decode(p[:-1]) for p in paths[:8]]
    assert fn(completions=texts, target=np.repeat(targets[:2], group).tolist()) == pytest.approx(paid[:8])


def test_prompt_dataset_tokenizes_to_the_env_prompts(tiny_sid):
    task = tiny_sid[0]
    ds = prompt_dataset(task, [3, 5])
    assert ds.column_names == ["prompt", "row", "target", "history"]
    ids, lens = task.prompt_tokens(np.array([3, 5]))
    for i, text in enumerate(ds["prompt"]):
        assert task.items.tokenizer(text=text)["input_ids"] == ids[i, : lens[i]].tolist()
    assert ds["target"] == task.examples.target[[3, 5]].tolist()
