from dataclasses import replace

import pytest

from recgym.prompts import SID_TEMPLATE, TITLE_TEMPLATE


def test_title_prompt_is_alpaca_style_and_ends_with_the_header():
    text = TITLE_TEMPLATE.render(["A", 'B "x"'])
    assert text.startswith("Below is an instruction")
    assert '### Input:\nThe user has interacted with the following items before: "A", "B "x""' in text
    assert text.endswith("### Response:\n")
    assert TITLE_TEMPLATE.response("C") == '"C"\n'


def test_sid_prompt_is_compact_and_overridable():
    assert SID_TEMPLATE.render(["<a_1><b_2>"]).endswith("History: <a_1><b_2>\n\n### Response:\n")
    assert SID_TEMPLATE.response("<a_1><b_2>") == "<a_1><b_2>"
    games = replace(TITLE_TEMPLATE, noun="video game", nouns="video games")
    assert "new video game that" in games.render([])


# -- bad templates: errors at construction naming the field, not prompts without the history --

@pytest.mark.parametrize(("fields", "error", "match"), [
    ({"input": "History:"}, ValueError, r"input must contain \{history\}"),
    ({"item_format": "item"}, ValueError, r"item_format must contain \{text\}"),
    ({"instruction": "Recommend a {product}"}, ValueError,
     r"instruction has an unknown placeholder \{product\}"),
    ({"item_format": "{text.upper}"}, ValueError, r"item_format has an unknown placeholder \{text.upper\}"),
    ({"input": "{history} {"}, ValueError, "input is not a valid format string"),
    ({"instruction": None}, TypeError, "instruction must be a string, got None"),
    ({"separator": 1}, TypeError, "separator must be a string"),
])
def test_bad_templates_fail_at_construction(fields, error, match):
    with pytest.raises(error, match=match):
        replace(TITLE_TEMPLATE, **fields)


def test_compact_template_writes_items_back_to_back_after_one_end_token():
    from recgym.prompts import COMPACT_TEMPLATE, COMPACT_TITLE_TEMPLATE, template_named

    rendered = COMPACT_TEMPLATE.render(["<a_1><b_2>", "<a_3><b_4>"], end="</s>")
    assert rendered == "</s><a_1><b_2></s><a_3><b_4></s>"
    assert COMPACT_TITLE_TEMPLATE.render(["Doom"], end="E") == 'E"Doom"\nE'
    assert COMPACT_TEMPLATE.compact and not SID_TEMPLATE.compact
    assert template_named("compact", "title") is COMPACT_TITLE_TEMPLATE
    assert template_named("instruction", "sid") is SID_TEMPLATE
    with pytest.raises(ValueError, match="response_header must be empty"):
        replace(COMPACT_TEMPLATE, response_header="### Response:\n")
    with pytest.raises(ValueError, match="layout='chat'"):
        replace(SID_TEMPLATE, layout="chat")
