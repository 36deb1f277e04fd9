"""A checker for OpenAI chat fine-tune JSONL, with the rules of OpenAI's format checker.
Returns a list of readable problems; empty means valid."""

from __future__ import annotations

import json

ROLES = {"system", "user", "assistant", "tool"}
MESSAGE_KEYS = {"role", "content", "weight", "tool_calls", "tool_call_id", "name"}
LINE_KEYS = {"messages", "tools"}


def check_jsonl(text: str, min_examples: int = 10) -> list[str]:
    problems = []
    lines = text.splitlines()
    if len(lines) < min_examples:
        problems.append(f"{len(lines)} examples; at least {min_examples} are required")
    for n, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e})")
            continue
        if not isinstance(example, dict):
            problems.append(f"line {n}: not an object")
            continue
        if set(example) - LINE_KEYS:
            problems.append(f"line {n}: unknown keys {sorted(set(example) - LINE_KEYS)}")
        messages = example.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append(f"line {n}: no messages")
            continue
        call_ids: set[str] = set()
        for i, m in enumerate(messages):
            where = f"line {n} message {i}"
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                problems.append(f"{where}: missing role or content")
                continue
            if set(m) - MESSAGE_KEYS:
                problems.append(f"{where}: unknown keys {sorted(set(m) - MESSAGE_KEYS)}")
            if m["role"] not in ROLES:
                problems.append(f"{where}: unknown role {m['role']!r}")
            if not isinstance(m["content"], str):
                problems.append(f"{where}: content is not text")
            if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)):
                problems.append(f"{where}: weight must be 0 or 1, on assistant messages only")
            for call in m.get("tool_calls", []):
                function = call.get("function", {})
                if call.get("type") != "function" or not call.get("id") or not function.get("name"):
                    problems.append(f"{where}: malformed tool call")
                try:
                    json.loads(function.get("arguments", ""))
                except json.JSONDecodeError:
                    problems.append(f"{where}: tool call arguments are not a JSON string")
                call_ids.add(call.get("id"))
            if m["role"] == "tool" and m.get("tool_call_id") not in call_ids:
                problems.append(f"{where}: tool message answers no earlier tool call")
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            problems.append(f"line {n}: no assistant message")
    return problems
