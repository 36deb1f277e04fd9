"""`bot conversations redact`: one stored conversation's personal data replaced in place."""

from __future__ import annotations

import argparse
import asyncio

from bot.cli.drafts import with_store


def cmd_redact(args) -> int:
    from bot.config import load_settings
    from bot.data.redaction import describe
    from bot.pipelines import drafts

    settings = load_settings(args.project)
    summary = asyncio.run(with_store(settings, lambda store: drafts.redact_conversation(store, settings, args.id)))
    print(f"redacted conversation {args.id} in place: {describe(summary)}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    conversations = commands.add_parser("conversations", help="stored conversations")
    conversation_actions = conversations.add_subparsers(dest="conversations_command", required=True, metavar="ACTION")
    redact = conversation_actions.add_parser(
        "redact", help="replace the personal data of one stored conversation in place (a data-protection request)"
    )
    redact.add_argument("id", help="the conversation id (sender)")
    redact.set_defaults(run=cmd_redact)
