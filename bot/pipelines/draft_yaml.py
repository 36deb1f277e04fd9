"""Writing a dialogue draft as YAML by hand: one turn per line as a person would write it, with
`# REVIEW:` comments where a person must look, and every text written so that the project's
YAML reader (bot/yamlsource.py, YAML 1.2 scalars) reads back exactly the same value."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from bot.yamlsource import _Loader

# Characters PyYAML refuses in a stream, plus the ones it reads as line breaks: written escaped.
_UNSAFE = re.compile("[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PLAIN_BLOCK = re.compile(r"[A-Za-z£$€(][^\x00-\x1f#:\"]*")  # then read back to be sure
_PLAIN_FLOW = re.compile(r"[A-Za-z£$€(][^\x00-\x1f#:\"{}\[\],]*")


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar: JSON's string syntax, with what YAML would not read escaped."""

    def escape(m: re.Match) -> str:
        code = ord(m.group())
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return _UNSAFE.sub(escape, json.dumps(text, ensure_ascii=False))


def _reads_back(text: str) -> bool:
    try:
        return yaml.load(text, Loader=_Loader) == text  # noqa: S506 (the project's safe loader)
    except yaml.YAMLError:
        return False


def scalar(value: Any, *, flow: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    plain = _PLAIN_FLOW if flow else _PLAIN_BLOCK
    if plain.fullmatch(text) and text == text.strip() and not _UNSAFE.search(text) and _reads_back(text):
        return text
    return _quoted(text)


def flow(value: Any) -> str:
    """A value on one line: {key: value, ...}, [a, b] or a scalar."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k, flow=True)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return scalar(value, flow=True)


def comment(note: str | None) -> str:
    if not note:
        return ""
    one_line = " ".join(_UNSAFE.sub(" ", note).split())  # a comment cannot escape a character
    return f"  # REVIEW: {one_line}"


def turn_lines(turn: dict, note: str | None, indent: str = "      ") -> list[str]:
    """One turn of the `turns:` list (user, bot with train, action with args and result, handoff)."""
    more = indent + "  "
    if "action" in turn:
        args = flow(turn.get("args") or {})
        lines = [f"{indent}- action: {scalar(turn['action'])}{comment(note)}", f"{more}args: {args}"]
        if "result" in turn:
            lines.append(f"{more}result: {flow(turn['result'])}")
        return lines
    kind = next(k for k in ("user", "bot", "handoff") if k in turn)
    if kind == "bot" and turn.get("train") is False:
        return [f"{indent}- bot: {scalar(turn['bot'])}", f"{more}train: false{comment(note)}"]
    return [f"{indent}- {kind}: {scalar(turn[kind])}{comment(note)}"]
