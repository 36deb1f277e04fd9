"""The `bot` command: one module per command group, each with its options beside its handlers.
The only place that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from bot.cli import chat, conversation_tests, conversations, data, evaluate, models, project, serve, train, tune
from bot.errors import BotError, InvalidFiles

# In the order `bot --help` lists them.
GROUPS = (data, train, tune, evaluate, conversation_tests, models, serve, chat, conversations, project)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bot", description="Contact-center chatbot: data, training, evaluation and serving."
    )
    p.add_argument("-C", "--project", default=".", metavar="DIR", help="the bot project's folder (default: here)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in GROUPS:
        group.add_commands(commands)
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
        if e.then:
            print(e.then)
        return 1
    except BotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
