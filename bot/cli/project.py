"""`bot init`: a new bot project that validates as it is."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_init(args) -> int:
    from bot.scaffold import create_project

    folder = create_project(Path(args.dir))
    print(f"created a bot project in {folder}: next, 'bot -C {args.dir} data validate'")
    print(f"to serve it as a brand beside another project: 'bot serve --brand {folder.name.lower()}={args.dir}' there")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="create a new bot project with an example persona and dialogues")
    init.add_argument("dir", help="folder to create (must not hold a bot project yet)")
    init.set_defaults(run=cmd_init)
