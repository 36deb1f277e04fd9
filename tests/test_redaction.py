"""Redaction (bot/data/redaction.py): each kind of personal data found and replaced by a
realistic placeholder, the same one for the same value; what is not personal data kept."""

from __future__ import annotations

import random
import re

import pytest

from bot.config import RedactionConfig, load_settings
from bot.data.redaction import Redactor, describe, luhn_valid
from bot.errors import InvalidFiles
from bot.pipelines.draft_yaml import flow, scalar
from bot.yamlsource import load_bytes


def redactor(**config) -> Redactor:
    return Redactor(RedactionConfig(**config), random.Random(1))


def test_cards_are_luhn_checked_and_replaced_by_test_cards_in_the_same_layout():
    r = redactor()
    assert luhn_valid("4539148803436467") and not luhn_valid("1234567890123456")
    out = r.text("card 4539-1488-0343-6467, not a card 1234 5678 9012 3456")
    card = re.search(r"card (\S+),", out).group(1)
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}-\d{4}", card)
    assert luhn_valid(card.replace("-", "")) and card != "4539-1488-0343-6467"
    assert "not a card 1234 5678 9012 3456" in out
    assert r.summary() == {"card": 1}


def test_phone_numbers_in_any_format_are_one_value_with_a_uk_placeholder():
    r = redactor()
    out = [r.text(t) for t in ("ring 07911 123456", "or +44 7911 123456", "or 07911123456", "or +33 6 12 34 56 78")]
    local = re.search(r"07700 900\d{3}", out[0]).group()
    assert out[1] == f"or +44 {local[1:]}" and out[2] == "or " + local.replace(" ", "")
    assert re.fullmatch(r"or \+44 7700 900\d{3}", out[3]) and out[3] != out[1]
    assert r.summary() == {"phone": 2}
    assert r.text("on 2026-11-13 at 10:15, £12.50 for 3 months") == "on 2026-11-13 at 10:15, £12.50 for 3 months"


def test_postcodes_accounts_orders_and_emails_keep_their_shape():
    r = redactor()
    out = r.text("ls6 2ab / LS62AB / SW1A 1AA, account 40118822, order KM-147730, ES-1001, j****@icloud.com")
    postcode = re.match(
        r"([a-z]{1,2}\d{1,2} \d[a-z]{2}) / ([A-Z]{1,2}\d{1,2}\d[A-Z]{2}) / ([A-Z]{1,2}\d{1,2} \d[A-Z]{2}),", out
    )
    assert postcode and postcode.group(1).upper().replace(" ", "") == postcode.group(2)  # one postcode, two spellings
    assert postcode.group(3) != "SW1A 1AA"
    account = re.search(r"account (\d{8}),", out).group(1)
    assert account != "40118822"
    assert re.search(r"order KM-\d{6}, ES-\d{4}, [a-z]+\.[a-z]+\d+@example\.(com|org|net)$", out)
    assert "KM-147730" not in out and "ES-1001" not in out and "icloud" not in out
    assert r.summary() == {"email": 1, "postcode": 2, "account": 1, "order": 2}
    assert describe(r.summary()) == "1 email address, 2 postcodes, 1 account number, 2 order or reference numbers"
    assert describe({}) == "nothing found"


def test_names_given_or_returned_are_replaced_everywhere_and_ordinary_words_kept():
    r = redactor()
    texts = [
        "hi, my name is priya shah and I need help",
        "This is Tom from Leeds.",
        "I'm having trouble, I'm Very annoyed",
    ]
    r.learn_names(texts, [{"verified": True, "first_name": "Helen", "plan_name": "Everyday 30GB"}])
    first, second, third = (r.text(t) for t in texts)
    given = re.match(r"hi, my name is ([a-z]+) ([a-z]+) and I need help", first)
    assert given and (given.group(1), given.group(2)) != ("priya", "shah")
    tom = re.match(r"This is ([A-Z][a-z]+) from Leeds\.", second).group(1)
    assert tom != "Tom" and third == "I'm having trouble, I'm Very annoyed"
    given_name, family_name = given.group(1).title(), given.group(2).title()
    assert r.text("Thanks, Priya Shah and Tom!") == f"Thanks, {given_name} {family_name} and {tom}!"
    result = r.value({"first_name": "Helen", "plan_name": "Everyday 30GB"})
    assert result["plan_name"] == "Everyday 30GB" and result["first_name"] not in ("Helen", tom)
    assert r.text("Hi Helen") == f"Hi {result['first_name']}"
    assert r.summary() == {"name": 4}


def test_the_same_value_gets_the_same_placeholder_and_new_conversations_new_ones():
    a, b = Redactor(RedactionConfig()), Redactor(RedactionConfig())
    text = "40118822 and 40118822, KM-147730"
    assert a.text(text) == a.text(text) and a.text(text).split()[0] == a.text(text).split()[2].rstrip(",")
    assert a.value({"order_id": "KM-147730"})["order_id"] in a.text(text)
    fresh = {Redactor(RedactionConfig()).text(text) for _ in range(5)}
    assert len(fresh | {b.text(text)}) > 1  # drawn, not derived from the value


def test_the_patterns_come_from_config_yml_and_a_bad_one_is_located(tmp_path):
    (tmp_path / "config.yml").write_text("redaction:\n  patterns:\n    order: 'ORD\\d{5}'\n  name_intros: []\n")
    config = load_settings(tmp_path).build.redaction
    r = Redactor(config, random.Random(2))
    assert re.fullmatch(r"see ORD\d{5}, KM-147730", r.text("see ORD12345, KM-147730"))
    assert "ORD12345" not in r.text("ORD12345")
    r.learn_names(["I'm Tom."])
    assert r.text("I'm Tom.") == "I'm Tom."
    (tmp_path / "config.yml").write_text("redaction:\n  patterns:\n    email: '[a-z'\n")
    with pytest.raises(InvalidFiles) as e:
        load_settings(tmp_path)
    assert str(e.value.problems[0]).startswith(
        "config.yml:3:12: error: 'email' is not a valid regular expression: unterminated character set"
    )


@pytest.mark.parametrize(
    "text",
    [
        "yes",
        "no",
        "null",
        "True",
        "2e-4",
        "40118822",
        "- dash",
        "a: b",
        "x # y",
        "#tag",
        "'quoted'",
        '"dq"',
        "{a: 1}",
        "[1, 2]",
        "<img src=x onerror=alert(1)>",
        "line\nbreak",
        "tab\there",
        "  padded  ",
        "",
        "café ☕ 🙂",
        "\u2028sep",
        "bell\x07",
        "back\\slash",
        "@at",
        "%pct",
        "*star",
        "&amp",
        "!bang",
        "|pipe",
        ">gt",
        "?q",
        "Plain words, with a comma",
        "ends with colon:",
    ],
)
def test_draft_scalars_read_back_exactly(text):
    mapping = flow({"k": text, text or "e": [text, 1, None, True]})
    doc = load_bytes(f"a: {scalar(text)}\nb: {mapping}\n".encode(), "t.yml")
    assert doc.value == {"a": text, "b": {"k": text, text or "e": [text, 1, None, True]}}


def test_words_after_the_phrases_that_are_not_names_stay():
    r = redactor()
    texts = [
        "call me back tomorrow",
        "It's Monday.",
        "my name is not important",
        "this is Ridiculous!",
        "Call me Ishmael.",
    ]
    r.learn_names(texts)
    out = [r.text(t) for t in texts]
    assert out[:4] == texts[:4] and out[4] != texts[4] and out[4].startswith("Call me ")
    assert r.text("I want my money back") == "I want my money back" and r.summary() == {"name": 1}
