"""Helpers for the serving tests: a scripted engine (the engine interface with scripted replies;
everything around it, from prompt rendering to the detokenizer and cancellation, is the real
code), test servers, and a reader of server-sent events."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.data.profile import profile_of
from bot.data.project import validate
from bot.engine.protocol import LENGTH, PLAIN, STOP, Engine, EngineClosed, EngineStats, Finished
from bot.engine.response_model import ResponseModel
from bot.engine.text import IncrementalText

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "t0ken-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the headers of an admin request

CHROMIUM = "/usr/bin/chromium"
# Browser tests drive Debian's chromium (never a downloaded browser, see the `browser` fixture);
# they skip without it, except in CI, where .ci/run installs it, so a missing browser fails there.
_chromium_missing_outside_ci = not Path(CHROMIUM).exists() and os.environ.get("CI") != "true"
requires_chromium = pytest.mark.skipif(
    _chromium_missing_outside_ci, reason=f"{CHROMIUM} is not installed (apt-get install chromium)"
)


class ScriptedEngine(Engine):
    """The engine interface with scripted replies: token by token through the real incremental
    detokenizer, with the real `Finished` record; remembers every prompt it was given."""

    name = "scripted"

    def __init__(self, tokenizer, replies: list[str] | Callable[[str], str] = (), delay: float = 0.0):
        self.tokenizer = tokenizer
        self.replies = replies if callable(replies) else deque(replies)
        self.delay = delay
        self.prompts: list[list[int]] = []
        self.text_only: list[bool] = []  # per prompt: was the reply asked to be text only
        self.excluded: list[tuple[str, ...]] = []  # per prompt: the actions it was asked not to call
        self.generated = 0  # tokens generated in all
        self.stopped = 0  # streams closed before their end (a client went away)
        self.closed = False
        self._in_flight = 0

    def next_reply(self, prompt_text: str) -> str:
        if callable(self.replies):
            return self.replies(prompt_text)
        return self.replies.popleft() if self.replies else "Happy to help."

    async def stream(self, prompt_ids, max_new_tokens, decoding=PLAIN):
        if self.closed:
            raise EngineClosed("the model engine is closed")
        self.prompts.append(list(prompt_ids))
        self.text_only.append(decoding.text_only)  # like an engine without the constraint, it may still call
        self.excluded.append(decoding.excluded)
        reply = self.next_reply(self.tokenizer.decode(prompt_ids))
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos]
        text, started, first, reason, ended = IncrementalText(self.tokenizer), time.monotonic(), None, LENGTH, False
        self._in_flight += 1
        try:
            for token in ids[:max_new_tokens]:
                await asyncio.sleep(self.delay)  # also lets other tasks run, as the engine thread does
                if token == eos:
                    reason = STOP
                    break
                self.generated += 1
                first = first or time.monotonic() - started
                if piece := text.add(token):
                    yield piece
            ended = True
            yield Finished(
                text.text.strip(), tuple(text.ids), first, time.monotonic() - started, reason, len(prompt_ids)
            )
        finally:
            self._in_flight -= 1
            self.stopped += not ended

    async def close(self) -> None:
        self.closed = True

    def stats(self) -> EngineStats:
        return EngineStats(0, self._in_flight, 0, 0, 0, self.generated)

    def in_flight(self) -> int:
        return self._in_flight


def scripted_model(
    settings, tokenizer, replies=(), *, delay: float = 0.0, model_id: str | None = "scripted"
) -> ResponseModel:
    profile = profile_of(validate(settings))
    return ResponseModel(
        ScriptedEngine(tokenizer, replies, delay), tokenizer, profile, model_id, settings.build.model.max_length
    )


NO_ACTION_SERVER = "action_endpoint:\n  url: http://127.0.0.1:9/webhook\n"  # nothing listens on port 9


def make_project(
    folder: Path, cache_dir: Path, base: str | Path = "bundled", config: str = "", endpoints: str = NO_ACTION_SERVER
) -> Path:
    import shutil

    shutil.copytree(ROOT / "bot" / "templates" / "project" / "training_data", folder / "training_data")
    (folder / "config.yml").write_text(
        f"model:\n  base: {base}\n  max_length: 1024\n  cache_dir: {cache_dir}\n{config}"
    )
    (folder / "endpoints.yml").write_text(endpoints)
    return folder


def settings_of(folder: Path):
    return load_settings(folder)


def sse_events(body: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event in a response body."""
    events = []
    for block in body.split("\n\n"):
        name, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            events.append((name, json.loads(data) if data != "[DONE]" else "[DONE]"))
    return events


async def chat(client, sender: str, message: str) -> list[tuple[str, dict]]:
    """One customer message through /api/chat/stream (a test client): its server-sent events."""
    response = await client.post("/api/chat/stream", json={"sender": sender, "message": message})
    return sse_events(await response.text())


async def stored_events(client, sender: str) -> list[dict]:
    """The conversation's events, as the test client's server stored them."""
    from bot.serve.keys import STORE

    return await client.server.app[STORE].events(sender)
