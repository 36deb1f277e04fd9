"""`bot data validate | compile | stats | tool-schema`; the drafts commands of the group are in
bot/cli/drafts.py."""

from __future__ import annotations

import argparse
import json
import os

from bot.cli import drafts
from bot.cli.output import text_table
from bot.cli.parsing import command_group


def _stats_row_order(item) -> tuple[bool, bool, str]:
    """The training set first, and in each set the "(all)" row first, then the tags by name."""
    (name, tag), _counts = item
    return (name != "train", tag != "(all)", tag)


def _table(stats) -> str:
    header = ("set", "tag", "dialogues", "turns", "trained turns", "tokens", "trained tokens")
    rows = []
    for (name, tag), c in sorted(stats.rows.items(), key=_stats_row_order):
        rows.append((name, tag, c.dialogues, c.turns, c.trained_turns, c.tokens, c.trained_tokens))
    cells = [header] + [tuple(f"{v:,}" if isinstance(v, int) else v for v in row) for row in rows]
    out = text_table(cells, left=2)
    for (name, tag), c in sorted(stats.rows.items(), key=lambda kv: kv[0][0] != "train"):
        if tag == "(all)" and c.sequences != c.dialogues:
            out += (
                f"\n({name}: {c.dialogues:,} dialogue(s) make {c.sequences:,} sequences: a dialogue longer than "
                f"model.max_length is split at user turns)"
            )
    if stats.drafts:
        out += f"\n({stats.drafts} draft dialogue(s) awaiting review, not compiled)"
    return out


def cmd_validate(args) -> int:
    from bot.config import load_settings
    from bot.data.project import conversation_tests, validate

    settings = load_settings(args.project)
    data = validate(settings)
    tests = conversation_tests(settings, data)
    print(
        f"ok: {len(data.train)} training and {len(data.test)} held-out dialogues, {len(tests)} conversation tests, "
        f"{len(data.actions)} actions, no problems"
    )
    return 0


def cmd_stats(args) -> int:
    from bot.config import load_settings
    from bot.data.project import LazyTokenizer, statistics, validate

    settings = load_settings(args.project)
    tokenizer = LazyTokenizer(settings)
    print(_table(statistics(settings, validate(settings, tokenizer), tokenizer)))
    return 0


def cmd_tool_schema(args) -> int:
    from bot.config import load_settings
    from bot.data.project import validate
    from bot.data.tool_schema import tool_call_schema

    print(json.dumps(tool_call_schema(validate(load_settings(args.project)).actions), indent=2))
    return 0


def cmd_compile(args) -> int:
    from bot.config import load_settings
    from bot.data.project import compile_data

    settings = load_settings(args.project)
    files, stats = compile_data(settings)
    print(_table(stats))
    for path in (files.train_file, files.test_file, files.index_file):
        print(f"wrote {os.path.relpath(path)}")
    print(f"data hash {files.data_hash}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    data_commands = command_group(commands, "data", "check and compile training_data/")
    actions = (
        ("validate", "check every file; list every problem", cmd_validate),
        ("compile", "write build/train.jsonl and build/test.jsonl", cmd_compile),
        ("stats", "dialogues, turns and tokens per tag, without writing", cmd_stats),
        (
            "tool-schema",
            'the JSON Schema of a tool call (vLLM\'s structured output: {"json": schema})',
            cmd_tool_schema,
        ),
    )
    for name, help, run in actions:
        data_commands.add_parser(name, help=help).set_defaults(run=run)
    drafts.add_data_commands(data_commands)
