"""bot/cli/output.py: the CLI's plain-text tables."""

from __future__ import annotations

from bot.cli.output import text_table

ROWS = [("set", "tag", "tokens"), ("train", "(all)", "1,234"), ("test", "orders", "80")]


def test_left_columns_then_right_aligned_numbers_under_a_rule():
    assert text_table(ROWS, left=2).splitlines() == [
        "set    tag     tokens",
        "-----  ------  ------",
        "train  (all)    1,234",
        "test   orders      80",
    ]


def test_all_left_without_a_rule_and_no_trailing_spaces():
    rows = [("id", "active"), ("20260101-000000", "*"), ("20260102-000000", "")]
    assert text_table(rows, left=2, rule=False).splitlines() == [
        "id               active",
        "20260101-000000  *",
        "20260102-000000",
    ]
