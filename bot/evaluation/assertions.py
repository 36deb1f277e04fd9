"""Checking a conversation test's assertions (bot.data.conversation_tests) against the events of
the conversation the bot actually had. Each check returns None when it holds, else what was
expected, in words."""

from __future__ import annotations

import json
import re
from typing import Any

from bot.conversations.events import ACTION, BOT, HANDOFF, SLOT, Event
from bot.data.conversation_tests import ActionCall, Assertion, TextCheck


def _same(expected: Any, actual: Any) -> bool:
    """Text compares ignoring case and runs of spaces; `{matches: REGEX}` matches the whole value."""
    if isinstance(expected, dict):
        return actual is not None and re.fullmatch(expected["matches"], str(actual).strip(), re.IGNORECASE) is not None
    if isinstance(expected, str) or isinstance(actual, str):
        return " ".join(str(expected).split()).casefold() == " ".join(str(actual).split()).casefold()
    return expected == actual


def call_text(name: str, arguments: dict) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (arguments or {}).items())
    return f"{name}({args})"


def shown_texts(events: list[Event]) -> list[str]:
    """What the customer read from the bot: its messages and the handoff message."""
    return [e["text"] for e in events if e["type"] in (BOT, HANDOFF) and e.get("text")]


def _text_holds(check: TextCheck, text: str) -> bool:
    if check.contains is not None:
        return check.contains.casefold() in text.casefold()
    return re.search(check.text_matches, text) is not None


def _text_wanted(check: TextCheck) -> str:
    return f"'{check.contains}'" if check.contains is not None else f"/{check.text_matches}/"


def _calls(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if e["type"] == ACTION and e.get("name") == name]


def failure(assertion: Assertion, events: list[Event]) -> str | None:
    """Why `assertion` does not hold over `events` (None: it holds)."""
    kind = assertion.kind
    value = getattr(assertion, kind)
    if kind == "action_executed":
        call = value if isinstance(value, ActionCall) else ActionCall(name=value)
        ran = _calls(events, call.name)
        fits = [e for e in ran if all(_same(v, (e.get("arguments") or {}).get(k)) for k, v in call.args.items())]
        if fits:
            return None
        wanted = call_text(call.name, {k: v for k, v in call.args.items()}) if call.args else call.name
        return f"expected the action {wanted} to run"
    if kind == "action_not_executed":
        return f"expected {value} not to run" if _calls(events, value) else None
    if kind == "handed_off":
        happened = any(e["type"] == HANDOFF for e in events)
        if happened == value:
            return None
        return "expected a handoff to a person" if value else "expected no handoff"
    if kind in ("bot_uttered", "bot_did_not_utter"):
        said = [t for t in shown_texts(events) if _text_holds(value, t)]
        if kind == "bot_uttered":
            return None if said else f"expected a bot message with {_text_wanted(value)}"
        return f"expected no bot message with {_text_wanted(value)}" if said else None
    slots = [(e.get("name"), e.get("value")) for e in events if e["type"] == SLOT]
    problems = []
    for check in value:
        given = "value" in check.model_fields_set
        hit = any(n == check.name and (not given or _same(check.value, v)) for n, v in slots)
        wanted = f"{check.name}={json.dumps(check.value)}" if given else check.name
        if kind == "slot_was_set" and not hit:
            problems.append(f"expected the slot {wanted} to be set")
        elif kind == "slot_was_not_set" and hit:
            problems.append(f"expected the slot {wanted} not to be set")
    return "; ".join(problems) or None
