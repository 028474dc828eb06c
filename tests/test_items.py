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
