"""The `bot` command. The only place that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bot.errors import BotError, InvalidFiles


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _table(stats) -> str:
    header = ("set", "tag", "dialogues", "turns", "trained turns", "tokens", "trained tokens")
    rows = []
    for (name, tag), c in sorted(stats.rows.items(), key=lambda kv: (kv[0][0] != "train", kv[0][1] != "(all)", kv[0][1])):
        rows.append((name, tag, c.dialogues, c.turns, c.trained_turns, c.tokens, c.trained_tokens))
    cells = [header] + [tuple(f"{v:,}" if isinstance(v, int) else v for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    if stats.drafts:
        out.append(f"({stats.drafts} draft dialogue(s) awaiting review, not compiled)")
    return "\n".join(out)


def cmd_validate(args) -> int:
    from bot.config import load_settings
    from bot.data.project import validate

    data = validate(load_settings(args.project))
    print(f"ok: {len(data.train)} training and {len(data.test)} held-out dialogues, {len(data.actions)} actions, no problems")
    return 0


def cmd_stats(args) -> int:
    from bot.config import load_settings
    from bot.data.project import LazyTokenizer, statistics, validate

    settings = load_settings(args.project)
    tokenizer = LazyTokenizer(settings)
    print(_table(statistics(settings, validate(settings, tokenizer), tokenizer)))
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


def cmd_init(args) -> int:
    from bot.scaffold import create_project

    folder = create_project(Path(args.dir))
    print(f"created a bot project in {folder}: next, 'bot -C {args.dir} data validate'")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bot", description="Contact-center chatbot: data, training, evaluation and serving.")
    p.add_argument("-C", "--project", default=".", metavar="DIR", help="the bot project's folder (default: here)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="check and compile training_data/")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_commands.add_parser("validate", help="check every file; list every problem").set_defaults(run=cmd_validate)
    data_commands.add_parser("compile", help="write build/train.jsonl and build/test.jsonl").set_defaults(run=cmd_compile)
    data_commands.add_parser("stats", help="dialogues, turns and tokens per tag, without writing").set_defaults(run=cmd_stats)

    init = commands.add_parser("init", help="create a new bot project with an example persona and dialogues")
    init.add_argument("dir", help="folder to create (must not hold a bot project yet)")
    init.set_defaults(run=cmd_init)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except InvalidFiles as e:
        for problem in e.problems:
            print(problem)
        files = len({p.path for p in e.problems})
        count = len(e.problems)
        print(f"{count} error{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''}")
        return 1
    except BotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
