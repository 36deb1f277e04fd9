"""Dialogues -> OpenAI chat fine-tune JSONL.

One conversation per line: the system prompt from the persona, user and assistant messages,
actions as assistant `tool_calls` followed by a `tool` message with the result, a handoff as a
call of the built-in `handoff_to_human` tool, and `weight: 0` on bot turns not to be trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import atomic
from bot.data import schema
from bot.data.preferences import Preference
from bot.data.profile import PROFILE_FILE, profile_of
from bot.data.prompt import system_prompt

Message = dict[str, Any]


def tools_schema(actions: dict[str, schema.Action]) -> list[dict]:
    """The declared actions, plus the handoff, as OpenAI function tools."""
    tools = []
    for name, action in actions.items():
        properties = {}
        for arg_name, arg in action.arguments.items():
            prop: dict[str, Any] = {"type": arg.type}
            if arg.description:
                prop["description"] = arg.description
            if arg.enum is not None:
                prop["enum"] = list(arg.enum)
            properties[arg_name] = prop
        required = [a for a, spec in action.arguments.items() if spec.required]
        parameters = {"type": "object", "properties": properties, "required": required}
        tools.append(
            {
                "type": "function",
                "function": {"name": name, "description": action.description, "parameters": parameters},
            }
        )
    handoff_parameters = {"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]}
    tools.append(
        {
            "type": "function",
            "function": {
                "name": schema.HANDOFF_TOOL,
                "description": "Pass the conversation to a human agent.",
                "parameters": handoff_parameters,
            },
        }
    )
    return tools


def tool_call_message(call_id: str, name: str, arguments: dict, weight: int = 1) -> Message:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
    return {"role": "assistant", "content": "", "tool_calls": [call], "weight": weight}


def dialogue_messages(dialogue: schema.Dialogue, system: str) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": system}]
    for j, turn in enumerate(dialogue.turns):
        if isinstance(turn, schema.UserTurn):
            messages.append({"role": "user", "content": turn.user})
        elif isinstance(turn, schema.BotTurn):
            messages.append({"role": "assistant", "content": turn.bot, "weight": int(turn.train)})
        elif isinstance(turn, schema.ActionTurn):
            call_id = f"call_{j}"
            messages.append(tool_call_message(call_id, turn.action, turn.args))
            result = json.dumps(turn.result, ensure_ascii=False)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        elif isinstance(turn, schema.HandoffTurn):
            messages.append(tool_call_message(f"call_{j}", schema.HANDOFF_TOOL, {"reason": turn.handoff}))
    return messages


def to_examples(data: schema.TrainingData, dialogues: list[schema.Dialogue]) -> list[dict]:
    system = system_prompt(data.persona, data.actions)
    tools = tools_schema(data.actions)
    return [{"messages": dialogue_messages(d, system), "tools": tools} for d in dialogues]


def reply_only(messages: list[Message]) -> list[Message]:
    """The messages with only the last one trained: a preference is about that reply alone."""
    out = [dict(m, weight=0) if m["role"] == "assistant" else m for m in messages[:-1]]
    return out + [dict(messages[-1], weight=1)]


def preference_examples(data: schema.TrainingData, preferences: list[Preference]) -> list[dict]:
    """build/preferences.jsonl's rows: `messages` ends with the rated step (a reply, a call) or
    the chosen reply, the only one trained; `desirable` (a rating) or `rejected_messages` (the
    same context, the worse reply)."""
    system = system_prompt(data.persona, data.actions)
    rows = []
    for p in preferences:
        messages = dialogue_messages(p.dialogue, system)
        if isinstance(p.dialogue.turns[-1], schema.ActionTurn):
            messages = messages[:-1]  # a rated call: the call, not its result
        messages = reply_only(messages)
        row: dict[str, Any] = {"id": p.id, "messages": messages}
        if p.rating is not None:
            row["desirable"] = p.rating == "up"
        else:
            row["rejected_messages"] = messages[:-1] + [{"role": "assistant", "content": p.rejected, "weight": 1}]
        rows.append(row)
    return rows


@dataclass(frozen=True)
class CompiledData:
    train_file: Path
    test_file: Path
    index_file: Path
    data_hash: str


PREFERENCES_FILE = "preferences.jsonl"


def _jsonl(examples: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in examples)


def _test_entry(d: schema.Dialogue) -> dict[str, Any]:
    """A held-out dialogue's index entry: where it is and what its replies are expected to do."""
    expect = d.expect.model_dump() if d.expect else None
    return {"id": d.id, "tags": list(d.tags), "file": d.doc.path, "expect": expect}


def _hash(train_text: str) -> str:
    return hashlib.sha256(train_text.encode()).hexdigest()[:16]


def data_hash(data: schema.TrainingData) -> str:
    """The hash a model trained on `data` records (index.json's `data_hash`), without writing."""
    return _hash(_jsonl(to_examples(data, data.train)))


def write(
    data: schema.TrainingData, build_dir: Path, preferences: list[Preference] | tuple[Preference, ...] = ()
) -> CompiledData:
    """Write train.jsonl, test.jsonl, index.json (ids, tags, expectations and the data hash),
    preferences.jsonl (the reviewed preferences, for the preference stage of training) and
    profile.json (what the server needs: system prompt, actions, handoff message)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    train_text = _jsonl(to_examples(data, data.train))
    test_text = _jsonl(to_examples(data, data.test))
    hashed = _hash(train_text)
    index = {
        "data_hash": hashed,
        "train": [{"id": d.id, "tags": list(d.tags), "file": d.doc.path} for d in data.train],
        "test": [_test_entry(d) for d in data.test],
    }
    files = CompiledData(build_dir / "train.jsonl", build_dir / "test.jsonl", build_dir / "index.json", hashed)
    profile = json.dumps(profile_of(data).to_json(), indent=2, ensure_ascii=False) + "\n"
    outputs = [
        (files.train_file, train_text),
        (files.test_file, test_text),
        (files.index_file, json.dumps(index, indent=2) + "\n"),
        (build_dir / PREFERENCES_FILE, _jsonl(preference_examples(data, list(preferences)))),
    ]
    for path, text in outputs + [(build_dir / PROFILE_FILE, profile)]:
        atomic.write_text(path, text)  # processes may compile at once
    return files
