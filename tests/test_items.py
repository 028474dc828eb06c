import numpy as np
import pytest

from recgym.data import Catalogue, make_synthetic
from recgym.items import ItemTokenizer, sid_vocabulary, train_tokenizer


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(num_items=300, num_users=200, seed=0)


@pytest.mark.parametrize("representation", ["title", "sid"])
def test_prompt_plus_item_tokenizes_as_prompt_tokens_then_item_tokens(dataset, representation):
    items = ItemTokenizer.train(dataset, representation, vocab_size=800)
    histories = [dataset.test.history[r, : dataset.test.history_len[r]].tolist() for r in range(20)]
    prompts = items.encode_prompts(histories)
    for h, ids in zip(histories, prompts):
        for item in (0, 17, 299):
            text = items.prompt_text(h) + items.template.response(items.item_text(item))
            full = items.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert full + [items.eos_token_id] == ids + items.sequences[item].tolist()


def test_title_tokens_merge_the_opening_quote_in_context(dataset):
    items = ItemTokenizer.train(dataset, "title", vocab_size=800)
    first = items.tokenizer.convert_ids_to_tokens(items.sequences[0][:1].tolist())[0]
    assert first.startswith('"') and len(first) > 1  # the quote is part of the first word's token
    bare = items.tokenizer(dataset.catalogue.titles[0], add_special_tokens=False)["input_ids"]
    assert bare[0] != items.sequences[0][0]


def test_sid_sequences_are_the_codes_then_eos(dataset):
    items = ItemTokenizer.train(dataset, "sid", vocab_size=500)
    tokens = items.tokenizer.convert_ids_to_tokens(items.sequences[5].tolist())
    assert tokens == [*[f"<{c}_{v}>" for c, v in zip("abc", dataset.catalogue.sids[5])], "<|endoftext|>"]
    assert sid_vocabulary(np.array([[1, 0]])) == ["<a_0>", "<a_1>", "<b_0>"]


def test_save_and_load_round_trip(tmp_path, dataset):
    items = ItemTokenizer.train(dataset, "title", vocab_size=600)
    items.save(tmp_path / "tok")
    back = ItemTokenizer.load(tmp_path / "tok", dataset.catalogue)
    assert back.template == items.template and back.representation == "title"
    assert all(np.array_equal(a, b) for a, b in zip(back.sequences, items.sequences))


def test_any_hugging_face_tokenizer_works_and_missing_parts_are_reported():
    tok = train_tokenizer(["hello world", '"x"'] * 5, vocab_size=280)
    cat = Catalogue(2, titles=["x", "hello"])
    assert len(ItemTokenizer(tok, cat, "title").sequences) == 2
    with pytest.raises(ValueError, match="no semantic IDs"):
        ItemTokenizer(tok, cat, "sid")
    with pytest.raises(ValueError, match="representation"):
        ItemTokenizer(tok, cat, "ids")
    with pytest.raises(ValueError, match="no titles"):
        ItemTokenizer(tok, Catalogue(1, sids=[[0]]), "title")


# -- bad input: clear errors naming the argument (issue 15, item 10) --

@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"vocab_size": -1}, ValueError, "vocab_size must be >= 257 .*got -1"),
    ({"vocab_size": 0}, ValueError, "vocab_size must be >= 257 .*got 0"),
    ({"vocab_size": 256}, ValueError, "vocab_size must be >= 257 .*got 256"),
    ({"vocab_size": 300.5}, TypeError, "vocab_size must be an int, got 300.5"),
    ({"vocab_size": True}, TypeError, "vocab_size must be an int, got True"),
    ({"texts": "hello world"}, TypeError, "texts must be an iterable of strings, not one string"),
    ({"added_tokens": "<a_0>"}, TypeError, "added_tokens must be a sequence of strings, not one string"),
])
def test_train_tokenizer_refuses_bad_arguments(kwargs, error, match):
    kwargs = {"texts": ["hello world"] * 4, "vocab_size": 300, **kwargs}
    with pytest.raises(error, match=match):
        train_tokenizer(kwargs.pop("texts"), **kwargs)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"representation": "ids"}, ValueError, "representation must be one of"),
    ({"vocab_size": 10}, ValueError, "vocab_size must be >= 257"),
    ({"max_prompts": -1}, ValueError, "max_prompts must be >= 0, got -1"),
    ({"max_prompts": 2.5}, TypeError, "max_prompts must be an int"),
    ({"seed": 0.5}, TypeError, "seed must be an int"),
    ({"template": "History: {history}"}, TypeError, "template must be a PromptTemplate"),
])
def test_item_tokenizer_training_checks_arguments_before_training(monkeypatch, dataset, kwargs, error, match):
    import recgym.items

    def no_training(*args, **kw):
        raise AssertionError("a tokenizer was trained before the arguments were checked")

    monkeypatch.setattr(recgym.items, "train_tokenizer", no_training)
    kwargs = {"representation": "sid", "vocab_size": 500, **kwargs}
    with pytest.raises(error, match=match):
        ItemTokenizer.train(dataset, kwargs.pop("representation"), **kwargs)


def test_item_tokenizer_refuses_a_template_of_the_wrong_type():
    tok = train_tokenizer(["hello world", '"x"'] * 5, vocab_size=280)
    with pytest.raises(TypeError, match="template must be a PromptTemplate"):
        ItemTokenizer(tok, Catalogue(2, titles=["x", "hello"]), "title", template="{history}")


@pytest.mark.parametrize("representation", ["sid", "title"])
def test_compact_prompt_plus_an_item_is_the_prompt_of_the_longer_history(representation):
    from recgym.prompts import template_named

    ds = make_synthetic(num_items=300, num_users=100, seed=0)
    items = ItemTokenizer.train(ds, representation, template=template_named("compact", representation),
                                vocab_size=600)
    eos = items.eos_token_id
    a, b = items.encode_prompts([[5, 9], [5, 9, 17]])
    assert a == [eos, *items.sequences[5], *items.sequences[9]]
    assert b == a + items.sequences[17].tolist()  # so one stream teaches every position
    # The text it stands for tokenizes to the same ids (the end token is the only separator).
    assert items.tokenizer(items.prompt_text([5, 9]), add_special_tokens=False)["input_ids"] == a
    # Every item ends with the end token: the separator between items in a compact prompt.
    assert all(s[-1] == eos for s in items.sequences)
