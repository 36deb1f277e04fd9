"""`bot chat` in process: scripted lines typed at the prompt, the scripted model behind the real
conversation service (bot/runtime/services.py's open_services), what is printed, and everything
closed at the end."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
from serve_support import make_project, scripted_model, settings_of

from bot.cli import chat as cli_chat
from bot.runtime import services


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.fixture
def typed(monkeypatch):
    """typed(lines): what the person types at `you>`, then end of input (Ctrl-D)."""

    def type_in(lines: list[str]) -> None:
        left = list(lines)

        def fake_input(prompt: str) -> str:
            if not left:
                raise EOFError
            return left.pop(0)

        monkeypatch.setattr(cli_chat, "input", fake_input, raising=False)

    return type_in


@pytest.fixture
def opened(monkeypatch):
    """The services `bot chat` opened, to look at once it has closed them."""
    seen = []
    real = services.open_services

    @asynccontextmanager
    async def spy(*args, **kwargs):
        async with real(*args, **kwargs) as opened:
            seen.append(opened)
            yield opened

    monkeypatch.setattr(services, "open_services", spy)
    return seen


async def test_chat_prints_replies_runs_actions_and_closes_everything(
    tmp_path, cache_dir, tokenizer, typed, opened, capsys
):
    settings = settings_of(make_project(tmp_path / "bot", cache_dir))  # nothing listens at the action endpoint
    replies = ["Hello! How can I help?", call("check_order", order_id="ES-1001")]
    model = scripted_model(settings, tokenizer, replies)
    typed(["hi", "   ", "where is order ES-1001?", "I want a person", "/quit", "never read"])

    await cli_chat.chat_in_process(settings, "t-1", load_model=lambda: model)

    out = capsys.readouterr().out
    assert "chatting with" in out and "as 't-1'" in out
    assert "bot> Hello! How can I help?\n" in out  # streamed token by token, then the line ends
    assert "[action_failed: check_order]" in out and "can't look that up" in out
    assert "bot> I'm passing you to a colleague" in out
    assert "tool_call" not in out
    # The model answered two lines: the blank one was skipped, the request for a person is answered by
    # the rule for it (no model), and nothing after /quit was read.
    assert len(model.engine.prompts) == 2

    [used] = opened
    stored = await _stored(settings, "t-1")
    assert [e["type"] for e in stored][:2] == ["user", "bot"] and stored[-1]["type"] == "handoff"
    assert model.engine.closed and used.store._closed  # the model's engine and the store are closed
    assert used.conversations.on_handoff.session.closed


async def test_a_store_that_cannot_open_closes_the_loaded_model(tmp_path, cache_dir, tokenizer, typed):
    endpoints = "action_endpoint:\n  url: http://127.0.0.1:9/webhook\ntracker_store:\n  type: redis\n"  # no url
    settings = settings_of(make_project(tmp_path / "bot", cache_dir, endpoints=endpoints))
    model = scripted_model(settings, tokenizer)
    typed(["hi"])
    from bot.conversations.store import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="tracker_store.url is needed for type 'redis'"):
        await cli_chat.chat_in_process(settings, "t-2", load_model=lambda: model)
    assert model.engine.closed and not model.engine.prompts


async def _stored(settings, sender):
    from bot.conversations.backends import open_store

    store = await open_store(settings)
    try:
        return await store.events(sender)
    finally:
        await store.close()


def test_a_status_is_transient_on_a_terminal_and_a_line_of_its_own_in_a_file(capsys):
    on_terminal = cli_chat._Shown(transient=True)
    on_terminal("status", {"text": "Checking your order…", "action": "check_order"})
    on_terminal("action", {"type": "action", "name": "check_order"})
    on_terminal("token", {"text": "It ships"})
    on_terminal("token", {"text": " today."})
    on_terminal("message", {"text": "It ships today."})
    shown = capsys.readouterr().out
    # the status line is erased before anything else is written, and the reply follows on it
    assert shown == "  (Checking your order…)\r\x1b[K  [action: check_order]\nbot> It ships today.\n"

    in_a_file = cli_chat._Shown(transient=False)
    in_a_file("status", {"text": "Checking your order…", "action": "check_order"})
    in_a_file("message", {"text": "It ships today."})
    assert capsys.readouterr().out == "  (Checking your order…)\nbot> It ships today.\n"
