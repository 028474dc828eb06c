"""Named RL recipes (agents/recipes.py): ReRe's and MiniOneRec's settings, and one ReRe step by hand."""

import copy
import math

import pytest
import torch

from agents.bench.runner import PRESETS, _rl_config, parse_agents
from agents.configs import RLConfig
from agents.learners import make_learner
from agents.model.policy import make_rollout_env
from agents.recipes import get_recipe, recipe_names
from agents.training.rl import update


def test_rere_is_rere_sh_and_minionerec_differs_only_in_batch():
    rere, mini = get_recipe("rere"), get_recipe("minionerec")
    learner = make_learner(rere.learner, **rere.learner_settings())
    c = learner.config
    # rere.sh: --beam_search True --num_generations 16 --reward_type ranking --beta 1e-3
    assert (c.rollout, c.group_size, c.reward, c.beta, c.loss_type) == ("beam", 16, "ranking", 1e-3, "grpo")
    assert (c.scale_rewards, c.eps) == (True, 1e-4)  # (r - mean) / (std + 1e-4)
    config = rere.rl_config(RLConfig(steps=200))
    # --learning_rate 1e-5, max_grad_norm 0.3, warmup_ratio 0.03 (HF: ceil), one on-policy update,
    # 64 completions x 4 processes x 2 accumulation / 16 = 32 requests per step
    assert (config.lr, config.grad_clip, config.warmup_steps, config.mu, config.minibatches,
            config.requests_per_step, config.weight_decay) == (1e-5, 0.3, 6, 1, 1, 32, 0.0)
    assert mini.settings == rere.settings
    assert {k: v for k, v in mini.rl.items() if rere.rl[k] != v} == {"requests_per_step": 64}  # 8 processes
    # flags a user gave (or a benchmark's budget) are kept
    kept = rere.rl_config(RLConfig(steps=100, lr=3e-4, requests_per_step=8), keep=("lr", "requests_per_step"))
    assert (kept.lr, kept.requests_per_step, kept.grad_clip, kept.warmup_steps) == (3e-4, 8, 0.3, 3)
    assert recipe_names() == ["rere", "minionerec"]
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("ReRe")


def test_bench_rows_of_a_recipe_keep_the_presets_budget():
    specs = {s.name: s for s in parse_agents("grpo,grpo-beam,rere", PRESETS["cpu"])}
    assert specs["grpo-beam"].settings == {"group_size": 16, "rollout": "beam"}
    assert specs["rere"].recipe == "rere" and specs["rere"].settings["reward"] == "ranking"
    config = _rl_config(PRESETS["cpu"], 0, False, "rere")
    cpu = PRESETS["cpu"]
    assert (config.steps, config.requests_per_step) == (cpu.rl_steps, cpu.requests_per_step)
    assert (config.lr, config.grad_clip, config.mu, config.minibatches) == (1e-5, 0.3, 1, 1)
    assert _rl_config(PRESETS["cpu"], 0, False).lr == PRESETS["cpu"].rl_lr


def test_one_rere_step_equals_a_hand_computation(tiny_sid, full_vocab_logprobs_by_hand,
                                                 rows_with_and_without_a_beam_hit):
    task, start = tiny_sid
    policy, reference = copy.deepcopy(start), copy.deepcopy(start)
    recipe = get_recipe("rere")
    learner = make_learner("grpo", **recipe.learner_settings(group_size=4))
    config = recipe.rl_config(RLConfig(steps=10, progress=False))
    # requests whose 4 beams hold the target below rank 0, so the ranking reward has a signal
    rows = rows_with_and_without_a_beam_hit(task, policy, 4)[:2]
    assert len(rows) == 2
    envs = make_rollout_env(task.with_reward("ranking"), len(rows) * 4)
    batch = learner.collect(policy, envs, rows, generator=torch.Generator(), seed=0)
    with torch.no_grad():
        batch.ref_logp = learner.logprobs(reference, batch)[0]

    # By hand (rere_trainer.py compute_loss): A_i = (r_i - mean r) / (std r + 1e-4) per group;
    # l_i = mean_t [-exp(log pi - log pi.detach()) * A_i + beta * k3_t]; loss = mean_i l_i.
    r = batch.rewards.reshape(2, 4).double()
    advantages = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    lp = full_vocab_logprobs_by_hand(policy, batch)  # (B, T) log pi from plain forwards of the model
    with torch.no_grad():
        ref = full_vocab_logprobs_by_hand(reference, batch)
    q = ref - lp
    k3 = torch.exp(q) - q - 1
    token_terms = -torch.exp(lp - lp.detach()) * advantages.float()[:, None] + 1e-3 * k3
    terms = [token_terms[i][batch.mask[i]].mean() for i in range(8)]
    hand_loss = torch.stack(terms).mean()
    grads = torch.autograd.grad(hand_loss, params)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert norm > 0.3  # so that ReRe's max_grad_norm = 0.3 acts
    expected = [-g * (0.3 / (norm + 1e-6)) for g in grads]  # clip_grad_norm_, then SGD with lr 1

    before = [p.detach().clone() for p in params]
    sums = update(policy, learner, [batch], torch.optim.SGD(params, lr=1.0), params, config, step=0)
    assert sums["loss"] == pytest.approx(float(hand_loss.detach()), abs=1e-5)
    assert sums["grad_norm"] == pytest.approx(norm, rel=1e-4)
    for p, b, e in zip(params, before, expected):
        torch.testing.assert_close(p.detach() - b, e, rtol=1e-3, atol=1e-6)
