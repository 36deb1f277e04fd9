"""What the command groups share in declaring their options."""

from __future__ import annotations

import argparse


def command_group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """`bot NAME ACTION ...`: the group's parser, whose actions are added to what this returns."""
    group = commands.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")
