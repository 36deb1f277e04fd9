"""What support teams type in YAML is read as they meant it."""

from __future__ import annotations

import pytest

from bot.errors import InvalidFiles
from bot.yamlsource import load


def read(tmp_path, text: str):
    f = tmp_path / "f.yml"
    f.write_text(text, encoding="utf-8")
    return load(f, "f.yml")


def test_yes_no_and_dates_stay_text(tmp_path):
    doc = read(tmp_path, "a: no\nb: yes\nc: 2026-11-03\nd: true\ne: 12\nf: 2e-4\ng: 1.5\nh: KM-104233\n")
    assert doc.value == {
        "a": "no",
        "b": "yes",
        "c": "2026-11-03",
        "d": True,
        "e": 12,
        "f": 2e-4,
        "g": 1.5,
        "h": "KM-104233",
    }


def test_positions_of_values_and_keys_are_one_based(tmp_path):
    doc = read(tmp_path, "top:\n  - x: 1\n    y: two\n")
    assert doc.where(("top", 0, "y")) == (3, 8)
    assert doc.where(("top", 0, "y"), key=True) == (3, 5)
    assert doc.where(("top", 5)) == (2, 3)  # unknown path: the nearest parent


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &x 1\nb: *x\n", "f.yml:2:4: error: aliases (*name) are not supported here: write the value out"),
        ("a: 1\n---\nb: 2\n", "f.yml:3:1: error: more than one YAML document in the file (remove the '---')"),
        ("? [a, b]\n: 1\n", "f.yml:1:3: error: a key must be plain text"),
        (
            "a: 1\nb: x\x13y\n",
            "f.yml:2:5: error: character U+0013 is not allowed in YAML: "
            "remove it, or write it escaped in a double-quoted text",
        ),
    ],
)
def test_unsupported_yaml_is_a_located_error(tmp_path, text, message):
    with pytest.raises(InvalidFiles) as e:
        read(tmp_path, text)
    assert [str(p) for p in e.value.problems] == [message]


def test_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "f.yml"
    f.write_bytes("\ufeffa: 1\n".encode())
    assert load(f, "f.yml").value == {"a": 1}
