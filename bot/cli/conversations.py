"""`bot conversations redact`: one stored conversation's personal data replaced in place."""

from __future__ import annotations

import argparse
import asyncio

from bot.cli.drafts import with_store
from bot.cli.parsing import command_group


def cmd_redact(args) -> int:
    from bot.config import load_settings
    from bot.data.redaction import describe
    from bot.pipelines import drafts

    settings = load_settings(args.project)
    summary = asyncio.run(with_store(settings, lambda store: drafts.redact_conversation(store, settings, args.id)))
    print(f"redacted conversation {args.id} in place: {describe(summary)}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    conversation_actions = command_group(commands, "conversations", "stored conversations")
    redact = conversation_actions.add_parser(
        "redact", help="replace the personal data of one stored conversation in place (a data-protection request)"
    )
    redact.add_argument("id", help="the conversation id (sender)")
    redact.set_defaults(run=cmd_redact)
