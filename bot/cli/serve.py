"""`bot serve`: the chat server, the widget and the APIs, until Ctrl-C."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.cli.output import say


def cmd_serve(args) -> int:
    import logging

    from bot.config import Endpoints, load_settings
    from bot.serve.app import run
    from bot.serve.shutdown import exit_now

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.project)
    if args.engine:
        serve = settings.build.serve.model_copy(update={"engine": args.engine})
        settings.build = settings.build.model_copy(update={"serve": serve})
    if args.brand:
        brands = dict(settings.endpoints.brands)
        for given in args.brand:
            name, _, folder = given.partition("=")
            brands[name] = str(Path(folder).resolve())
        settings.endpoints = Endpoints.model_validate(settings.endpoints.model_dump() | {"brands": brands})
    if args.model_server:
        server = settings.endpoints.model_server.model_copy(update={"url": args.model_server})
        settings.endpoints = settings.endpoints.model_copy(update={"model_server": server})
    host, port = args.host or settings.build.serve.host, args.port or settings.build.serve.port
    say(f"starting the bot on http://{host}:{port} (widget demo at /, health at /health); Ctrl-C stops it")
    run(settings, host, port, args.actions, train_if_needed=args.train_if_needed)
    exit_now(0)  # stopped and closed: the interpreter's slow teardown would overrun serve.shutdown_timeout_s


def _brand(value: str) -> str:
    from bot.config import BRAND_NAME

    name, equals, folder = value.partition("=")
    if not equals or not BRAND_NAME.fullmatch(name) or not Path(folder).is_dir():
        raise argparse.ArgumentTypeError(
            f"{value!r}: write NAME=DIR, NAME in lower-case letters, digits and '-', DIR a bot project's folder"
        )
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the active model: chat API, widget, OpenAI-compatible API")
    serve.add_argument("--host", help="address to listen on (default: serve.host in config.yml, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port in config.yml, 5005)")
    serve.add_argument(
        "--engine",
        choices=["batching", "serial"],
        help="generation engine (default: serve.engine in config.yml, batching)",
    )
    serve.add_argument(
        "--model-server",
        metavar="URL",
        help="generate on this OpenAI-compatible model server (vLLM or a bot serve); no weights are loaded here "
        "(default: model_server.url in endpoints.yml)",
    )
    serve.add_argument(
        "--brand",
        action="append",
        metavar="NAME=DIR",
        type=_brand,
        help="also serve the bot project in DIR as brand NAME, under /b/NAME/, on the same base model "
        "(repeat for more; adds to endpoints.yml's brands)",
    )
    serve.add_argument(
        "--actions",
        metavar="PACKAGE",
        help="also run a rasa-sdk action server for PACKAGE (e.g. actions), stopped with the bot; with brands, "
        "each brand's own too, where its folder has PACKAGE",
    )
    serve.add_argument(
        "--train-if-needed",
        action="store_true",
        help="while no trained model matches the training data, answer with the base model prompted few-shot, "
        "train in the background and serve the new model once it passes the gate (what 'make run' does)",
    )
    serve.set_defaults(run=cmd_serve)
