"""`bot chat`: talk to the bot in the terminal, in process (the active model, the project's
conversation store) or against a running server (`--url`). Part of the CLI: it prints."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from contextlib import aclosing

PROMPT = "you> "


async def _lines():
    while True:
        try:
            line = await asyncio.to_thread(input, PROMPT)
        except EOFError:
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip():
            yield line.strip()


def _say(text: str, end: str = "") -> None:
    print(text, end=end, flush=True)


class _Shown:
    """Prints one reply as it arrives: streamed text on one line, whole messages, notices. An
    action's status ("Checking your account…") is transient on a terminal, as in the widget: it
    stands on its own line until the reply's first words replace it. Printed to a file or a
    pipe, it stays, as a line of its own."""

    def __init__(self, transient: bool | None = None) -> None:
        self.streaming = False
        self.streamed = ""
        self.transient = sys.stdout.isatty() if transient is None else transient
        self.status_shown = False

    def _clear_status(self) -> None:
        if self.status_shown:
            _say("\r\x1b[K")  # back to the line's start, erase it
            self.status_shown = False

    def __call__(self, event: str | None, data: dict) -> None:
        self._clear_status()  # whatever comes next, a new status too, takes its line
        if event == "token":
            _say(("" if self.streaming else "bot> ") + data["text"])
            self.streaming = True
            self.streamed += data["text"]
        elif event == "message":
            text = data.get("text") or ""
            if (
                self.streaming and text.strip() != self.streamed.strip()
            ):  # it replaces what streamed (the leak guard's refusal)
                _say(f"\nbot> {text}\n")
            else:
                _say("\n" if self.streaming else f"bot> {text}\n")
            self.streaming, self.streamed = False, ""
        elif event == "status":
            if self.transient:
                _say(f"  ({data['text']})")
                self.status_shown = True
            else:
                _say(f"  ({data['text']})\n")
        elif event == "action":  # in process only: what ran, failed or was refused
            _say(f"  [{data['type']}: {data['name']}]\n")
        elif event == "waiting":
            _say("(a member of the team has this conversation; the bot is not answering)\n")
        elif event == "error":
            _say(f"(error: {data['error']})\n")


async def chat_in_process(settings, sender: str, *, load_model=None) -> None:
    """`load_model` defaults to loading the active trained model (or the base model)."""
    from bot.conversations.events import ACTION, ACTION_PROBLEMS, BOT, HANDOFF
    from bot.policy.reply import Piece, Status
    from bot.runtime.processor import Waiting
    from bot.runtime.services import open_services

    _say("loading the model...\n")
    async with open_services(settings, load_model=load_model) as services:
        _say(f"chatting with {services.holder.current.description} as '{sender}' (/quit to leave)\n")
        async for line in _lines():
            shown = _Shown()
            async with aclosing(services.conversations.handle(sender, line)) as items:
                async for item in items:
                    if isinstance(item, Piece):
                        shown("token", {"text": item.text})
                    elif isinstance(item, Status):
                        shown("status", {"text": item.text, "action": item.action})
                    elif isinstance(item, Waiting):
                        shown("waiting", {})
                    elif item["type"] in (BOT, HANDOFF):
                        shown("message", item)
                    elif item["type"] in (ACTION, *ACTION_PROBLEMS):
                        shown("action", item)


async def chat_over_http(url: str, sender: str) -> None:
    import aiohttp

    from bot.serve.client import chat_events

    _say(f"chatting with {url} as '{sender}' (/quit to leave)\n")
    async with aiohttp.ClientSession() as session:
        async for line in _lines():
            shown = _Shown()
            async for event, data in chat_events(session, url, sender, line):
                shown(event, data)


def run(settings, url: str | None, sender: str | None) -> None:
    sender = sender or f"terminal-{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(chat_over_http(url, sender) if url else chat_in_process(settings, sender))
    except KeyboardInterrupt:
        pass
    print(file=sys.stdout)


def cmd_chat(args) -> int:
    from bot.config import load_settings

    run(load_settings(args.project), args.url, args.sender)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with the bot in the terminal")
    chat.add_argument("--url", help="a running server (http://127.0.0.1:5005); default: the active model in process")
    chat.add_argument("--sender", help="conversation id (default: a new one)")
    chat.set_defaults(run=cmd_chat)
