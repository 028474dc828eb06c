import json

import numpy as np
import pytest

from agents.bench import runner as bench
from agents.bench.report import METRICS
from agents.bench.runner import ABLATION, PRESETS, get_preset, parse_agents, parse_seeds
from agents.cli import main
from agents.learners import Learner, make_learner, register_learner, unregister_learner
from agents.training.tracking import MetricLogger
from recgym.metrics import request_gains

CI_AGENTS = "popularity,sasrec,sft,grpo,riser,maskable_ppo"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))


def test_ablation_expands_into_add_one_and_leave_one_out_variants():
    preset = PRESETS["ci"]
    specs = parse_agents("popularity,ablation", preset)
    assert [s.name for s in specs] == ["popularity", *ABLATION]
    by_name = {s.name: s for s in specs[1:]}
    assert all(s.kind == "rl" and "full_vocab" not in s.settings for s in by_name.values())  # the policy's
    # GRPO trains groups of the same n as the oversampling variants.
    assert by_name["grpo"].learner == "grpo" and by_name["grpo"].settings["group_size"] == preset.riser_group
    m, n = preset.rollouts_per_request, preset.riser_group
    expected = {  # (oversample, simpo_weight, certainty_d, kl_cov_k); RISER's defaults: m, 1, 0.7, 2e-3
        "+oversample": (m, 0.0, 1.0, 0.0), "+simpo": (m, 1.0, 1.0, 0.0), "+certainty": (m, 0.0, 0.7, 0.0),
        "+kl_cov": (m, 0.0, 1.0, 2e-3), "-oversample": (None, 1.0, 0.7, 2e-3), "-simpo": (m, 0.0, 0.7, 2e-3),
        "-certainty": (m, 1.0, 1.0, 2e-3), "-kl_cov": (m, 1.0, 0.7, 0.0), "riser": (m, 1.0, 0.7, 2e-3)}
    for name, (o, w, d, k) in expected.items():
        learner = make_learner(by_name[name].learner, **by_name[name].settings)
        c = learner.config
        assert (c.oversample, c.simpo_weight, c.certainty_d, c.kl_cov_k) == (o, w, d, k), name
        assert c.group_size == n and c.full_vocab is None
        assert learner.rollouts_per_request == (m if o else n)
    with pytest.raises(ValueError, match="listed twice"):
        parse_agents("grpo,ablation", preset)
    tuned = parse_agents("ablation", preset, {"+simpo": {"simpo_weight": 0.5}})
    assert {s.name: s for s in tuned}["+simpo"].settings["simpo_weight"] == 0.5
    with pytest.raises(ValueError, match="--learner-set"):
        parse_agents("sft,grpo", preset, {"riser": {"simpo_weight": 0.5}})


class _Constant(Learner):
    name = "constant"

    def __init__(self, group_size: int = 4) -> None:
        self.group_size = group_size

    @property
    def rollouts_per_request(self) -> int:
        return self.group_size

    def make_batch(self, policy, rollout):
        raise NotImplementedError

    def loss(self, policy, batch):
        raise NotImplementedError


def test_plugin_registry_names_errors_and_budget_check():
    preset = PRESETS["ci"]
    register_learner("constant", lambda **settings: _Constant(**settings))
    try:
        assert "constant" in bench.agent_choices()
        spec = parse_agents("sft,constant", preset)[1]
        assert (spec.kind, spec.learner, spec.settings) == ("rl", "constant", {"group_size": 8})
        with pytest.raises(ValueError, match="already registered"):
            register_learner("constant", lambda **settings: _Constant(**settings))
        with pytest.raises(ValueError, match="already registered"):
            register_learner("grpo", lambda **settings: _Constant(**settings))
    finally:
        unregister_learner("constant")
    with pytest.raises(ValueError, match=r"--agents: unknown agent 'constant'; choose from popularity, .*"):
        parse_agents("constant", preset)
    # A factory that ignores the bench's group_size would break the shared budget: refused up front.
    register_learner("stubborn", lambda **settings: _Constant(group_size=3))
    try:
        with pytest.raises(ValueError, match="draws 3 rollouts per request, the bench's budget is 8"):
            bench._check_learners(parse_agents("stubborn", preset))
    finally:
        unregister_learner("stubborn")


def test_bad_arguments_are_named(tmp_path, capsys):
    assert parse_seeds("3, 1") == [3, 1]
    for bad in ("", "0,0", "a", "-1", "0;1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    out = str(tmp_path / "x")
    assert main(["bench", "--agents", "sft,nope", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--agents: unknown agent 'nope'" in err and "maskable_ppo" in err and "ablation" in err
    assert main(["bench", "--seeds", "0,zero", "--out", out]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["bench", "--preset-set", "warp=9", "--out", out]) == 2
    assert "--preset-set: unknown preset field(s) ['warp']" in capsys.readouterr().err
    assert main(["bench", "--plugin", str(tmp_path / "missing.py"), "--out", out]) == 2
    assert "--plugin: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "huge"])
    assert "argument --preset: invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--preset: unknown preset 'huge'"):
        bench.get_preset("huge")
    with pytest.raises(ValueError, match="riser_group"):
        bench.get_preset("ci", riser_group=9)
    assert main(["bench", "--preset", "paper", "--agents", "popularity,sft", "--out", out]) == 2
    assert "--model: the paper preset needs a local pretrained causal LM" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing ran


def tiny_title_lm(folder, layers: int) -> tuple:
    """A tiny tied Qwen2 (a Hugging Face folder with the synthetic titles' tokenizer) standing in for a
    pretrained LM, and the synthetic title task options it reads: ``(folder, task)``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.build import make_task

    small = {"num_items": 60, "num_users": 80, "num_categories": 4, "clusters_per_category": 3}
    task = {"dataset": "synthetic", "representation": "title", "vocab_size": 800, "dataset_kwargs": small}
    tokenizer = make_task("RecGen-Synthetic-v0", "train", task).items.tokenizer
    tokenizer.save_pretrained(folder)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder, task


def test_paper_preset_runs_from_a_local_pretrained_lm(tmp_path):
    """The paper preset's path: --model DIR (a Hugging Face folder), titles tokenized by its tokenizer.

    A tiny Qwen2 stands in for Qwen2-1.5B and synthetic titles for Games (no weights, raw Games
    download or GPU here); every preset knob but the scale and the data is the paper's.
    """
    from agents.model.policy import LLMPolicy

    lm, task = tiny_title_lm(tmp_path / "lm", layers=1)
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "paper", "--model", str(lm), "--env", "RecGen-Synthetic-v0",
                 "--preset-set", "task=" + json.dumps(task), "--preset-set", "riser_group=4",
                 "--preset-set", "sft_batch_size=8", "--agents", "sft,riser", "--seeds", "0",
                 "--sft-steps", "2", "--rl-steps", "1", "--requests-per-step", "2", "--rollouts", "4",
                 "--test-requests", "4", "--eval-requests", "4", "--quiet", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["preset"]["name"] == "paper" and results["representation"] == "title"
    assert results["preset"]["sft_lr"] == PRESETS["paper"].sft_lr
    assert results["sft"]["config"]["model"] == str(lm)
    assert results["agents"]["riser"]["runs"]["0"]["rollouts"] == 8  # 1 step x 2 requests x 4
    trained = LLMPolicy.from_pretrained(out / "sft" / "final")
    assert trained.model.config.hidden_size == 32 and trained.items.representation == "title"


def test_llm_preset_trains_adapters_on_valid_and_tests_the_zero_shot_model(tmp_path):
    """The cpu-llm preset's path: adapters, the valid split trains (no selection), a zero-shot row.

    A tiny Qwen2 stands in for SmolLM2-135M and synthetic titles for office-d3.
    """
    from agents.build import make_task
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate

    lm, task = tiny_title_lm(tmp_path / "lm", layers=2)
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "cpu-llm", "--model", str(lm), "--env", "RecGen-Synthetic-v0",
                 "--preset-set", "task=" + json.dumps(task), "--preset-set", 'adapters={"lora_r": 2}',
                 "--preset-set", "riser_group=3", "--preset-set", "sft_batch_size=8",
                 "--preset-set", "beam=50", "--agents", "zero_shot,sft,grpo", "--seeds", "0",
                 "--sft-steps", "3", "--rl-steps", "1",
                 "--requests-per-step", "2", "--rollouts", "4", "--test-requests", "6", "--quiet",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_protocol"]["model_selection"].startswith("none: the valid split trains")
    for run in ("sft", "runs/grpo-seed0"):  # trained on valid, validated on nothing
        data = json.loads((out / run / "fingerprint.json").read_text())["data"]
        assert data["train"]["split"] == "valid" and data["valid"] is None, run
        assert json.loads((out / run / "fingerprint.json").read_text())["run"]["adapters"]["lora_r"] == 2
    assert results["sft"]["valid_history"] == []
    trained = LLMPolicy.from_pretrained(out / "sft" / "final")
    assert trained.adapter is not None and trained.adapter["lora"]["r"] == 2  # LoRA saved with the policy
    # The zero-shot row is the untrained model under the same protocol, computed here independently.
    test = make_task("RecGen-Synthetic-v0", "test", task, tokenizer=str(lm))
    start = LLMPolicy.from_pretrained(lm, items=test.items)
    expected = evaluate(start, test, beam=50, max_requests=6, seed=0, progress=False, per_request=True)
    del expected["rows"]
    zero = results["agents"]["zero_shot"]["runs"]["0"]
    assert zero["metrics"]["first_hit_ranks"] == expected.pop("first_hit_ranks")  # the same requests' ranks
    assert {k: v for k, v in zero["metrics"].items() if k != "first_hit_ranks"} == pytest.approx(expected)
    assert zero["rollouts"] == 0
    assert zero["metrics"] != results["agents"]["sft"]["runs"]["0"]["metrics"]  # SFT changed the model


@pytest.mark.slow
def test_ci_preset_through_the_cli_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench"
    # The ci preset with its knobs turned down (every field is still written and checked).
    assert main(["bench", "--preset", "ci", "--agents", CI_AGENTS, "--seeds", "0", "--out", str(out),
                 "--sft-steps", "40", "--rl-steps", "4", "--test-requests", "60", "--eval-requests", "40",
                 "--sasrec-epochs", "2", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    preset = get_preset("ci", sft_steps=40, rl_steps=4, test_requests=60, eval_requests=40, sasrec_epochs=2)
    assert {k: results["preset"][k] for k in ("sft_steps", "rl_steps", "test_requests", "sasrec_epochs")} == {
        "sft_steps": 40, "rl_steps": 4, "test_requests": 60, "sasrec_epochs": 2}
    budget = preset.rl_steps * preset.requests_per_step * preset.rollouts_per_request
    assert results["budget"]["rollouts"] == budget and results["seeds"] == [0]
    assert results["preset"]["name"] == "ci" and results["representation"] == "sid"
    assert results["machine"]["cpus"] >= 1 and "torch" in results["machine"]
    assert results["agents_order"] == CI_AGENTS.split(",")
    assert list(results["agents"]) == CI_AGENTS.split(",")
    requests = results["test_protocol"]["requests"]
    for name, agent in results["agents"].items():
        run = agent["runs"]["0"]
        assert set(METRICS) <= set(run["metrics"]) and run["metrics"]["requests"] == requests, name
        assert all(0.0 <= run["metrics"][m] <= 1.0 for m in METRICS), name
        ranks = run["metrics"]["first_hit_ranks"]  # per request of the shared sample, -1: no hit
        assert len(ranks) == requests and -1 <= min(ranks) and max(ranks) < 50, name
        assert request_gains(ranks, "NDCG@10").mean() == pytest.approx(run["metrics"]["NDCG@10"]), name
        assert run["wall_seconds"] > (0 if name != "popularity" else -1), name
        assert isinstance(run["config"], dict) and run["config"], name
        if agent["kind"] in ("rl", "maskable_ppo"):
            assert run["rollouts"] == budget, name  # the same rollout budget for every RL agent
            assert (out / "runs" / f"{name}-seed0" / "metrics.jsonl").exists()
        else:
            assert run["rollouts"] == 0, name
    assert results["agents"]["grpo"]["runs"]["0"]["config"]["group_size"] == preset.rollouts_per_request
    riser = results["agents"]["riser"]["runs"]["0"]["config"]
    assert (riser["name"], riser["oversample"], riser["group_size"]) == ("riser", 8, preset.riser_group)
    assert riser["start"] == results["agents"]["grpo"]["runs"]["0"]["config"]["start"]  # one SFT start
    assert results["agents"]["sft"]["runs"]["0"]["shared_across_seeds"]
    assert results["agents"]["maskable_ppo"]["runs"]["0"]["config"]["num_envs"] == preset.ppo_envs
    assert results["agents"]["sasrec"]["runs"]["0"]["config"]["epochs"] == preset.sasrec_epochs
    # Table, figures, and the printed table.
    md = (out / "results.md").read_text()
    for name in results["agents"]:
        assert f"| {name} | " in md
    # Every row beside SFT: its paired bootstrap difference from SFT over the test requests.
    assert set(results["paired_differences"]) == set(results["agents"]) - {"sft"}
    assert "ΔNDCG@10 vs sft [95% CI]" in md and "ΔHR@20 vs sft [95% CI]" in md
    grpo = results["paired_differences"]["grpo"]["NDCG@10"]
    assert grpo["low"] <= grpo["difference"] <= grpo["high"] and grpo["requests"] == requests
    assert (out / "metrics.png").stat().st_size > 5000 and (out / "curves.png").stat().st_size > 5000
    assert "| maskable_ppo | " in capsys.readouterr().out
    # The PPO run logs curves against episodes like the RL learners do against rollouts.
    ppo_log = MetricLogger.read(out / "runs" / "maskable_ppo-seed0")
    assert ppo_log[-1]["rollouts"] == budget or ppo_log[-2]["rollouts"] == budget
    assert any("entropy" in r and "hit_rate" in r for r in ppo_log)
    assert any("valid/HR@10" in r for r in ppo_log)
    grpo_log = MetricLogger.read(out / "runs" / "grpo-seed0")
    assert all("rollouts" in r for r in grpo_log)  # validations too: curves need them on one axis


def test_sft_folder_is_reused_and_deterministic_agents_are_shared_across_seeds(tmp_path):
    first = tmp_path / "first"
    small = ["--preset", "ci", "--sft-steps", "5", "--rl-steps", "2", "--requests-per-step", "2",
             "--rollouts", "4", "--preset-set", "riser_group=3", "--test-requests", "20",
             "--eval-requests", "10", "--quiet"]
    assert main(["bench", "--agents", "popularity,sft", "--seeds", "0,1", "--out", str(first), *small]) == 0
    results = json.loads((first / "results.json").read_text())
    pop = results["agents"]["popularity"]["runs"]
    assert pop["0"]["metrics"] == pop["1"]["metrics"] and pop["1"]["shared_across_seeds"]
    assert "steps" in results["sft"] and (first / "sft" / "final" / "recgym_policy.json").exists()
    again = tmp_path / "again"
    assert main(["bench", "--agents", "sft,simpo", "--seeds", "0,1", "--sft", str(first / "sft" / "final"),
                 "--out", str(again), *small]) == 0
    reused = json.loads((again / "results.json").read_text())
    assert reused["sft"]["loaded"] == str(first / "sft" / "final")
    assert reused["agents"]["sft"]["runs"]["0"]["metrics"] == results["agents"]["sft"]["runs"]["0"]["metrics"]
    simpo = reused["agents"]["simpo"]["runs"]
    assert sorted(simpo) == ["0", "1"] and all(r["rollouts"] == 2 * 2 * 4 for r in simpo.values())
    assert simpo["0"]["config"]["rl"]["seed"] == 0 and simpo["1"]["config"]["rl"]["seed"] == 1


def test_history_exclusion_is_one_protocol_for_every_row(tmp_path, capsys):
    from agents.baselines import PopularityRecommender
    from agents.training.evaluate import evaluate_ranker, select_rows
    from recgym.envs import RecGenTask

    small = ["--preset", "ci", "--sft-steps", "5", "--test-requests", "40", "--eval-requests", "10",
             "--quiet", "--agents", "popularity,sft"]
    assert main(["bench", "--out", str(tmp_path / "plain"), *small]) == 0
    assert main(["bench", "--out", str(tmp_path / "excl"), "--sft", str(tmp_path / "plain" / "sft" / "final"),
                 "--preset-set", "exclude_history=true", *small]) == 0
    plain, excl = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("plain", "excl"))
    assert excl["test_protocol"]["history_excluded"] and not plain["test_protocol"]["history_excluded"]
    assert "history items excluded" in (tmp_path / "excl" / "results.md").read_text()
    task = RecGenTask(**{"dataset": "synthetic", **PRESETS["ci"].task}, split="test")
    pop = PopularityRecommender().fit(task.dataset.train, task.dataset.catalogue.num_items)
    for results, flag in ((plain, False), (excl, True)):
        expect = evaluate_ranker(pop, task.examples, max_requests=40, per_request=True, exclude_history=flag)
        got = results["agents"]["popularity"]["runs"]["0"]["metrics"]
        assert got["first_hit_ranks"] == expect["first_hit_ranks"] and got["history_excluded"] is flag
        assert results["agents"]["sft"]["runs"]["0"]["metrics"]["history_excluded"] is flag
    # The same SFT weights: excluding history loses the targets in it (synthetic users repeat items)
    # and moves every other target found up or keeps it.
    sft = [np.array(r["agents"]["sft"]["runs"]["0"]["metrics"]["first_hit_ranks"]) for r in (plain, excl)]
    ex = task.examples.subset(select_rows(task.num_requests, 40))
    repeat = (ex.history == ex.target[:, None]).any(axis=1)
    assert repeat.any() and (sft[1][repeat] == -1).all()
    found = (sft[0] >= 0) & ~repeat
    assert found.any() and (sft[1][found] >= 0).all() and (sft[1][found] <= sft[0][found]).all()
    assert main(["bench", "--out", str(tmp_path / "bad"), "--preset-set", "exclude_history=3", *small]) == 2


def test_a_rerun_resumes_the_same_settings_refuses_others_and_restart_starts_over(tmp_path, capsys):
    out = tmp_path / "bench"
    small = ["bench", "--preset", "ci", "--agents", "sft,grpo", "--seeds", "0", "--sft-steps", "3",
             "--rl-steps", "2", "--requests-per-step", "2", "--rollouts", "3", "--preset-set",
             "riser_group=2", "--test-requests", "10", "--eval-requests", "10", "--quiet", "--out", str(out)]
    assert main(small) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(small) == 0  # resumed: nothing left to train, the same numbers
    again = json.loads((out / "results.json").read_text())
    assert again["agents"]["grpo"]["runs"]["0"]["metrics"] == first["agents"]["grpo"]["runs"]["0"]["metrics"]
    capsys.readouterr()
    assert main([*small, "--preset-set", "rl_lr=0.001"]) == 2  # refused before anything trains
    err = capsys.readouterr().err
    assert f"{out / 'runs' / 'grpo-seed0'} holds a run with other settings" in err
    assert "config.lr: 0.0003 -> 0.001" in err and "--restart" in err
    assert main([*small, "--preset-set", "rl_lr=0.001", "--restart"]) == 0
    restarted = json.loads((out / "results.json").read_text())
    assert restarted["agents"]["grpo"]["runs"]["0"]["config"]["rl"]["lr"] == 0.001
    grpo_steps = [r["step"] for r in MetricLogger.read(out / "runs" / "grpo-seed0") if "loss" in r]
    assert grpo_steps == [1, 2]  # started over, logged once


def test_presets_set_sft_regularisation():
    cpu = bench._sft_config(get_preset("cpu"), seed=0, progress=False, train_rows=1000)
    sid = bench._sft_config(get_preset("cpu-sid"), seed=0, progress=False, train_rows=1000)
    assert (cpu.weight_decay, cpu.dropout, cpu.patience) == (0.1, 0.3, 0)
    assert (sid.weight_decay, sid.dropout, sid.patience) == (0.01, 0.2, 2)
    assert get_preset("cpu").task["sid_index"] == "atomic" and "sid_index" not in get_preset("cpu-sid").task
    changed = get_preset("cpu", sft_weight_decay=0.0)
    assert bench._sft_config(changed, seed=0, progress=False, train_rows=1000).weight_decay == 0.0
