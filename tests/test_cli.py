import json

import pytest

from agents.cli import main

SMALL = ["--dataset-set", "num_items=200", "--dataset-set", "num_users=150"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "cache"))


def test_data_describe_and_list(capsys):
    assert main(["data", "describe", "synthetic", "--set", "num_items=300", "--set", "num_users=100"]) == 0
    out = capsys.readouterr().out
    assert "dataset synthetic: 300 items" in out and "train" in out
    assert main(["data", "list"]) == 0
    assert "games-lcrec" in capsys.readouterr().out


def test_sft_then_eval_write_results(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["sft", "--representation", "sid", *SMALL, "--max-steps", "4", "--batch-size", "16",
            "--eval-requests", "10", "--test-requests", "10", "--out", str(run)]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["representation"] == "sid" and "HR@20" in results["test"]
    assert results["test"]["beam"] == 50 and "NDCG@50" in results["test"]  # the reference test protocol
    # A model from scratch gets the compact prompt, and SFT runs on users' sequences; both recorded.
    assert results["task"]["template"] == "compact" and results["sft"]["level"] == "sequence"
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    assert fingerprint["run"]["task"]["template"] == "compact" and fingerprint["config"]["level"] == "auto"
    assert "| sft (tiny) |" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert main(["eval", *SMALL, "--policy", str(run / "best"), "--max-requests", "10",
                 "--out", str(out)]) == 0
    plain = json.loads(out.read_text())["metrics"]
    assert plain["requests"] == 10 and plain["history_excluded"] is False
    assert main(["eval", *SMALL, "--policy", str(run / "best"), "--max-requests", "10", "--exclude-history",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["history_excluded"] is True
    assert main(["eval", *SMALL, "--agent", "transition", "--max-requests", "50"]) == 0
    assert "| transition |" in capsys.readouterr().out
    assert main(["eval", *SMALL, "--agent", "popularity", "--exclude-history", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["history_excluded"] is True


def test_train_runs_sft_then_rl_and_writes_results_and_curves(tmp_path, capsys):
    run = tmp_path / "train"
    args = ["train", "--agent", "riser", "--representation", "sid", *SMALL, "--sft-steps", "3",
            "--sft-batch-size", "16", "--steps", "2", "--requests-per-step", "3", "--group-size", "4",
            "--oversample", "6", "--eval-every", "1", "--eval-requests", "8", "--test-requests", "8",
            "--learner-set", "simpo_weight=0.5", "--out", str(run)]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["agent"]["name"] == "riser" and results["agent"]["simpo_weight"] == 0.5
    assert results["rl"]["steps"] == 2 and results["rl"]["rollouts"] == 2 * 3 * 6
    assert set(results["test"]) == {"sft", "sft -> riser"}
    assert {row["beam"] for row in results["test"].values()} == {50}  # validation's beam 20 is not the test's
    assert (run / "curves.png").stat().st_size > 1000
    assert "| sft -> riser |" in capsys.readouterr().out
    # RL from a saved SFT policy, another learner.
    again = tmp_path / "grpo"
    assert main(["train", "--agent", "grpo", *SMALL, "--sft", str(run / "sft" / "best"), "--steps", "1",
                 "--requests-per-step", "2", "--group-size", "3", "--eval-requests", "4",
                 "--test-requests", "4", "--out", str(again)]) == 0
    assert json.loads((again / "results.json").read_text())["sft"] == {"loaded": str(run / "sft" / "best")}
    assert main(["train", "--agent", "grpo", "--learner-set", "nonsense=1", "--out", str(again)]) == 2
    assert "unknown setting" in capsys.readouterr().err
    # ReRe's recipe: its learner settings and RL settings, but an explicit --lr wins
    rere = tmp_path / "rere"
    assert main(["train", "--recipe", "rere", *SMALL, "--sft", str(run / "sft" / "best"), "--steps", "2",
                 "--lr", "3e-4", "--requests-per-step", "2", "--group-size", "3", "--eval-requests", "4",
                 "--test-requests", "4", "--out", str(rere)]) == 0
    results = json.loads((rere / "results.json").read_text())
    assert results["recipe"] == "rere" and results["agent"]["rollout"] == "beam"
    assert results["agent"]["reward"] == "ranking" and results["agent"]["group_size"] == 3
    rl = results["rl_config"]
    settings = (rl["lr"], rl["grad_clip"], rl["mu"], rl["minibatches"], rl["requests_per_step"])
    assert settings == (3e-4, 0.3, 1, 1, 2)
    assert set(results["test"]) == {"sft", "sft -> rere"}
    assert main(["train", "--recipe", "rere", "--agent", "riser", "--out", str(rere)]) == 2
    assert "leave --agent out" in capsys.readouterr().err


def test_select_then_train_on_the_subset(tmp_path, capsys):
    sft = tmp_path / "sft"
    assert main(["sft", "--representation", "sid", *SMALL, "--max-steps", "2", "--batch-size", "8",
                 "--eval-requests", "4", "--test-requests", "4", "--out", str(sft)]) == 0
    selection = tmp_path / "minirec.json"
    assert main(["select", "--representation", "sid", *SMALL, "--policy", str(sft / "best"), "--method",
                 "minirec", "--size", "0.25", "--pool", "40", "--rollouts", "2", "--group", "4",
                 "--out", str(selection)]) == 0
    out = capsys.readouterr().out
    assert "minirec: 10 of 40 requests (curriculum order)" in out
    assert "time: " in out and "proxy_rollouts" in out
    sel = json.loads(selection.read_text())
    assert sel["selected"] == len(sel["order"]) == len(set(sel["order"])) == 10 and sel["curriculum"]
    assert set(sel["seconds"]) == {"proxy_training", "proxy_rollouts", "representativeness", "embeddings",
                                   "select", "total"}
    assert {"reward_mean", "learnability_mean", "solved_never"} <= set(sel["stats"])
    # Random needs no policy and no rollouts; a fraction or a count.
    rand = tmp_path / "random.json"
    assert main(["select", "--representation", "sid", *SMALL, "--method", "random", "--size", "7",
                 "--pool", "40", "--out", str(rand)]) == 0
    assert len(json.loads(rand.read_text())["order"]) == 7
    run = tmp_path / "train"
    assert main(["train", "--agent", "grpo", *SMALL, "--sft", str(sft / "best"), "--subset", str(selection),
                 "--steps", "2", "--requests-per-step", "4", "--group-size", "3", "--eval-every", "0",
                 "--eval-requests", "4", "--test-requests", "4", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["subset"] == {"file": str(selection), "requests": 10, "curriculum": True}
    assert main(["select", *SMALL, "--method", "minirec", "--out", str(rand)]) == 2
    assert "needs a proxy policy" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["train", "--agent", "grpo", *SMALL, "--sft", str(sft / "best"), "--subset",
                 str(tmp_path / "bad.json"), "--out", str(run)]) == 2
    assert "not a selection" in capsys.readouterr().err


def test_errors_are_reported_not_raised(capsys):
    assert main(["data", "describe", "no-such-dataset"]) == 2
    assert "recgym: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "describe", "synthetic", "--set", "novalue"])


def test_a_titles_only_dataset_becomes_a_sid_env_with_one_command(tmp_path, capsys):
    """`recgym data sids` on a D3 folder (titles only), then `recgym train` on its SIDs."""
    import csv

    import torch
    from transformers import BertConfig, BertModel

    from recgym.data import make_synthetic
    from recgym.data.readers import D3_COLUMNS
    from recgym.items import train_tokenizer

    ds = make_synthetic(num_items=300, num_users=150, seed=0)
    folder = tmp_path / "d3"  # the D3 csv layout: titles, no SIDs
    folder.mkdir()
    titles = ds.catalogue.titles
    (folder / "info.txt").write_text("".join(f"{t}\t{i}\n" for i, t in enumerate(titles)))
    for split, examples in (("valid", ds.valid), ("test", ds.test)):
        with open(folder / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(D3_COLUMNS)
            for row in range(len(examples)):
                hist = examples.history[row, : examples.history_len[row]].tolist()
                target, n, ts = int(examples.target[row]), len(hist), 1_000_000 + row
                writer.writerow([f"u{row}", repr([f"A{i}" for i in hist]), f"A{target}", repr(hist), target,
                                 repr([titles[i] for i in hist]), titles[target], repr([5.0] * n), 4.0,
                                 repr([ts - n + k for k in range(n)]), ts])
    encoder = tmp_path / "encoder"  # a tiny BERT with its tokenizer stands in for all-MiniLM-L6-v2
    tokenizer = train_tokenizer(ds.catalogue.titles, vocab_size=300)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    index = tmp_path / "d3.index.json"
    assert main(["data", "sids", str(folder), "--out", str(index), "--encoder", str(encoder), "--levels", "2",
                 "--codes", "16", "--cache-dir", str(tmp_path / "emb")]) == 0
    report = json.loads(capsys.readouterr().out.split("\nuse it")[0])
    assert report["items"] == 300 and report["collision_rate_after"] == 0.0
    run = tmp_path / "train"
    assert main(["train", "--env", "RecGen-v0", "--dataset", str(folder), "--train-split", "valid",
                 "--representation", "sid", "--set", f"sid_index={index}", "--set", "vocab_size=400",
                 "--sft-steps", "2", "--steps", "1", "--requests-per-step", "2", "--group-size", "3",
                 "--eval-requests", "4", "--test-requests", "4", "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["representation"] == "sid"


def test_adapter_flags_train_only_their_part_and_a_rerun_with_others_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from agents.model.policy import LLMPolicy
    from recgym.envs import RecGenTask

    run = tmp_path / "frozen"
    args = ["sft", "--representation", "sid", *SMALL, "--max-steps", "3", "--batch-size", "16",
            "--lr", "1e-2", "--eval-requests", "4", "--test-requests", "4", "--freeze", "top:1",
            "--train-embeddings", "none",
            "--out", str(run)]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["adapters"]["freeze"] == "top:1"
    # The same seeded start, built by hand: block 0 and the embeddings never moved, block 1 did.
    task = RecGenTask("synthetic", representation="sid", template="compact",  # the from-scratch default
                      dataset_kwargs={"num_items": 200, "num_users": 150})
    start = LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu").model.state_dict()
    trained = load_file(str(run / "best" / "model.safetensors"))
    frozen = [k for k in trained if ".layers.0." in k or "embed_tokens" in k]
    moved = [k for k in trained if ".layers.1." in k]
    assert frozen and moved
    assert all(torch.equal(trained[k], start[k]) for k in frozen)
    assert any(not torch.equal(trained[k], start[k]) for k in moved)
    # Other adapters on the same --out: refused before any training, naming the change.
    assert main([*args[:-2], "--lora-r", "4", "--out", str(run)]) == 2
    assert "adapters.lora_r: 0 -> 4" in capsys.readouterr().err


# -- a real pretrained LM on real data -------------------------------------------------------------


# One step of each stage, 1 request, beams of 1 and 2-item histories: the whole path, in under a minute.
TINY_RUN = ["--set", "max_history=2", "--sft-steps", "1", "--sft-batch-size", "2", "--steps", "1",
            "--requests-per-step", "1", "--group-size", "2", "--eval-requests", "1", "--beam", "1",
            "--metric", "HR@1", "--test-requests", "1", "--test-beam", "1", "--lora-r", "2",
            "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("representation", ["title", "sid"])
def test_smollm2_trains_end_to_end_on_real_data(representation, smollm2_converted, shared_data, tmp_path,
                                                 monkeypatch):
    # Titles: office-d3 (valid is the training stand-in, test is test). SIDs: RecGen-Games-v0, whose
    # LC-Rec codes become new tokens of SmolLM2's pretrained vocabulary.
    monkeypatch.setenv("RECGYM_DATA_DIR", str(smollm2_converted[0]))  # SmolLM2 converted there once
    monkeypatch.setenv("RECGYM_DATA_PATH", str(shared_data))
    task = (["--env", "RecGen-v0", "--dataset", "office-d3", "--representation", "title",
             "--train-split", "valid"] if representation == "title"
            else ["--env", "RecGen-Games-v0", "--representation", "sid"])
    run = tmp_path / representation
    assert main(["train", "--agent", "riser", "--model", "smollm2-135m", *task, *TINY_RUN,
                 "--oversample", "3", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "smollm2-135m" and results["representation"] == representation
    assert results["adapters"]["lora"]["r"] == 2
    assert results["rl"]["steps"] == 1 and results["rl"]["rollouts"] == 3
    assert {row["beam"] for row in results["test"].values()} == {1}
    saved = json.loads((run / "rl" / "checkpoint" / "recgym_policy.json").read_text())
    assert saved["base_vocab_size"] == 49_152  # SmolLM2's own vocabulary, recorded with the policy
    from agents.model.policy import LLMPolicy

    policy = LLMPolicy.from_pretrained(run / "rl" / "checkpoint", device="cpu")
    rows = policy.model.get_input_embeddings().weight.shape[0]
    if representation == "sid":  # the SID tokens were added on top of the pretrained vocabulary
        assert rows > 49_152 and "<a_0>" in policy.items.tokenizer.get_vocab()
    else:
        assert rows == 49_152


def test_template_flag_chooses_the_prompt_and_a_rerun_with_another_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["sft", "--representation", "sid", *SMALL, "--max-steps", "2", "--batch-size", "8",
            "--eval-requests", "10", "--test-requests", "5", "--test-beam", "10", "--out", str(run)]
    assert main([*args, "--template", "instruction"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"]["template"] == "instruction" and results["sft"]["level"] == "request"
    capsys.readouterr()
    assert main([*args, "--template", "compact"]) == 2  # the fingerprint records the template
    assert "template" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--template", "chat"])


def _subcommands(parser, path=()):
    """(command path, parser) of every command and subcommand of ``parser``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def test_every_flag_of_a_command_has_its_own_help():
    """No two flags of one command share a help sentence (issue 27): each config field documents itself.

    The generated ``(default: ...)`` tail is left out of the comparison, so two fields that share one
    docstring line still count as sharing it.
    """
    import re

    from agents.cli import build_parser

    shared = []
    for path, parser in _subcommands(build_parser()):
        seen: dict[str, str] = {}
        for action in parser._actions:
            if not action.option_strings or "--help" in action.option_strings:
                continue
            text = re.sub(r"\s*\(default: [^()]*(\([^()]*\)[^()]*)*\)$", "", action.help or "").strip()
            if not text:
                continue
            flag = action.option_strings[-1]
            if text in seen:
                shared.append(f"recgym {' '.join(path)}: {seen[text]} and {flag} share {text!r}")
            seen.setdefault(text, flag)
    assert not shared, "\n".join(shared)


def test_every_config_field_has_its_own_doc_line():
    """The dataclasses behind the flags document each field on its own line, in their own words."""
    import dataclasses

    from agents.baselines.maskable_ppo import MaskablePPOConfig
    from agents.bench.runner import BenchPreset
    from agents.cli_options import field_docs
    from agents.configs import AdapterConfig, RLConfig, SFTConfig
    from agents.learners.grpo import GRPOConfig
    from agents.learners.riser import RISERConfig
    from agents.learners.simpo import SimPOConfig

    for cls in (SFTConfig, RLConfig, AdapterConfig, BenchPreset, MaskablePPOConfig, GRPOConfig, RISERConfig,
                SimPOConfig):
        docs = field_docs(cls)
        own = {f.name for f in dataclasses.fields(cls)} if cls in (SFTConfig, RLConfig, AdapterConfig,
                                                                   BenchPreset) else set(docs)
        assert not own - set(docs), f"{cls.__name__}: undocumented fields {sorted(own - set(docs))}"
        texts = [docs[name] for name in own]
        assert len(set(texts)) == len(texts), f"{cls.__name__}: fields share a doc line"


def test_eval_model_scores_a_local_causal_lm_zero_shot_and_records_it(tmp_path, capsys):
    """``recgym eval --model DIR``: the LM as it is, under the reference protocol, recorded as a row."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.build import make_task
    from agents.model.policy import LLMPolicy
    from agents.training.evaluate import evaluate

    small = {"num_items": 60, "num_users": 80, "num_categories": 4, "clusters_per_category": 3}
    task = {"dataset": "synthetic", "representation": "title", "vocab_size": 800, "dataset_kwargs": small}
    lm = tmp_path / "lm"  # a tiny Hugging Face folder standing in for a pretrained LM
    tokenizer = make_task("RecGen-Synthetic-v0", "train", task).items.tokenizer
    tokenizer.save_pretrained(lm)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 tie_word_embeddings=True)).save_pretrained(lm)
    flags = ["--env", "RecGen-Synthetic-v0", "--representation", "title", "--set", "vocab_size=800",
             *(x for k, v in small.items() for x in ("--dataset-set", f"{k}={v}"))]
    out = tmp_path / "eval.json"
    assert main(["eval", *flags, "--model", str(lm), "--max-requests", "6", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert f"| zero_shot ({lm}) |" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["agent"] == "zero_shot" and record["model"] == str(lm) and record["split"] == "test"
    assert record["env"] == "RecGen-Synthetic-v0" and record["representation"] == "title"
    assert record["metrics"]["beam"] == 50 and record["metrics"]["requests"] == 6  # the reference protocol
    # The same numbers as the library's evaluate on the untrained LM (the bench's zero_shot row).
    test = make_task("RecGen-Synthetic-v0", "test", task, tokenizer=str(lm))
    expected = evaluate(LLMPolicy.from_pretrained(lm, items=test.items, device="cpu"), test, beam=50,
                        max_requests=6, seed=0, progress=False)
    assert record["metrics"] == pytest.approx(expected)
    # --model, --policy and --agent name three different things: one at a time.
    with pytest.raises(SystemExit):
        main(["eval", *flags, "--model", str(lm), "--agent", "popularity"])
    assert "argument --agent: not allowed with argument --model" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_model_smollm2_zero_shot_on_office_d3(smollm2_converted, shared_data, tmp_path, monkeypatch,
                                                   capsys):
    """The issue's command: ``recgym eval --model smollm2-135m --env RecGen-v0 --dataset office-d3``."""
    monkeypatch.setenv("RECGYM_DATA_DIR", str(smollm2_converted[0]))  # SmolLM2 converted there once
    monkeypatch.setenv("RECGYM_DATA_PATH", str(shared_data))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "smollm2-135m", "--env", "RecGen-v0", "--dataset", "office-d3",
                 "--max-requests", "2", "--beam", "10", "--device", "cpu", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| zero_shot (smollm2-135m) |" in table and "HR@10" in table
    record = json.loads(out.read_text())
    assert record["model"] == "smollm2-135m" and record["metrics"]["requests"] == 2
    assert record["metrics"]["beam"] == 10
