"""Helpers for the serving tests: a scripted stand-in for the neural network (everything around
it, from prompt rendering to the streamer and the stop signal, is the real code), test servers,
and a reader of server-sent events."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from bot.config import load_settings
from bot.data.profile import profile_of
from bot.data.project import validate
from bot.serve.generator import ResponseModel

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "t0ken-for-tests"


class ScriptedLM:
    """Answers `generate` like a causal LM, token by token through the streamer and stopping
    criteria it is given, with scripted replies; remembers every prompt it was given."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, replies: list[str] | Callable[[str], str] = (), delay: float = 0.0):
        self.tokenizer = tokenizer
        self.replies = replies if callable(replies) else deque(replies)
        self.delay = delay
        self.prompts: list[list[int]] = []
        self.generated = 0  # tokens generated in all
        self.stopped = 0  # generations ended by the stopping criteria (a client went away)
        self.running = threading.Event()

    def next_reply(self, prompt_text: str) -> str:
        if callable(self.replies):
            return self.replies(prompt_text)
        return self.replies.popleft() if self.replies else "Happy to help."

    def generate(self, input_ids, max_new_tokens, eos_token_id, streamer, stopping_criteria, **kwargs):
        self.prompts.append(input_ids[0].tolist())
        reply = self.next_reply(self.tokenizer.decode(input_ids[0]))
        ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos_token_id]
        streamer.put(input_ids.cpu())
        out = input_ids
        self.running.set()
        try:
            for token in ids[:max_new_tokens]:
                if self.delay:
                    time.sleep(self.delay)
                out = torch.cat([out, torch.tensor([[token]])], dim=1)
                self.generated += 1
                streamer.put(torch.tensor([token]))
                if token == eos_token_id:
                    break
                if stopping_criteria(out, None).all():
                    self.stopped += 1
                    break
        finally:
            self.running.clear()
        streamer.end()
        return out


def scripted_model(settings, tokenizer, replies=(), *, delay: float = 0.0, model_id: str | None = "scripted") -> ResponseModel:
    profile = profile_of(validate(settings))
    return ResponseModel(ScriptedLM(tokenizer, replies, delay), tokenizer, profile, model_id, settings.build.model.max_length)


NO_ACTION_SERVER = "action_endpoint:\n  url: http://127.0.0.1:9/webhook\n"  # nothing listens on port 9


def make_project(folder: Path, cache_dir: Path, base: str | Path = "bundled", config: str = "", endpoints: str = NO_ACTION_SERVER) -> Path:
    import shutil

    shutil.copytree(ROOT / "bot" / "templates" / "project" / "training_data", folder / "training_data")
    (folder / "config.yml").write_text(f"model:\n  base: {base}\n  max_length: 1024\n  cache_dir: {cache_dir}\n{config}")
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
