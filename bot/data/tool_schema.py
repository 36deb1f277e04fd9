"""The shape of a tool call, as a JSON Schema and as a grammar, from the declared actions.

A call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, written exactly as
training renders it (`bot.rendering.tool_call_text`: json.dumps' ", " and ": " separators). The
schema allows only a declared action (or the handoff), with its declared argument names, types
and enums, and a length limit on every text value, so that a free-text `reason` can't ramble
to the token limit. The same schema is what vLLM takes as structured output
(`"structured_outputs": {"json": schema}`, or `guided_json` in older releases); the grammar
wraps it in the markup for llguidance (bot.engine.constraint).
"""

from __future__ import annotations

import json

from bot.data.grounding import GroundedValues
from bot.data.prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from bot.data.schema import HANDOFF_REASON_MAX_CHARS, HANDOFF_TOOL, Action, Argument

JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
# json.dumps' default separators, the ones training data is rendered with; no other whitespace.
LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def _argument_schema(argument: Argument, values: tuple[str, ...] | None = None) -> dict:
    """`values`: what the conversation offers a grounded argument (the call copies one of them)."""
    schema: dict = {"type": JSON_TYPES[argument.type]}
    if argument.enum is not None:
        schema["enum"] = list(argument.enum)
    elif values:
        schema["enum"] = list(values)
    elif argument.type == "string":
        schema["maxLength"] = argument.max_chars
        if argument.pattern is not None:
            schema["pattern"] = f"^(?:{argument.pattern})$"
    return schema


def _call_schema(name: str, arguments: dict[str, Argument], values: dict[str, tuple[str, ...]] | None = None) -> dict:
    values = values or {}
    return {
        "type": "object",
        "properties": {
            "name": {"const": name},
            "arguments": {
                "type": "object",
                "properties": {a: _argument_schema(spec, values.get(a)) for a, spec in arguments.items()},
                "required": [a for a, spec in arguments.items() if spec.required],
                "additionalProperties": False,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_schema(
    actions: dict[str, Action], grounded: GroundedValues = (), *, excluded: tuple[str, ...] = ()
) -> dict:
    """JSON Schema of one call: `{"name", "arguments"}` of a declared action or the handoff,
    none of the `excluded` (the handoff among them, by its name); `grounded`: the values a
    conversation offers its grounded arguments (bot.data.grounding)."""
    reason = {"reason": Argument(type="string", max_chars=HANDOFF_REASON_MAX_CHARS)}
    offered: dict[str, dict[str, tuple[str, ...]]] = {}
    for action, argument, values in grounded:
        offered.setdefault(action, {})[argument] = values
    calls = [_call_schema(name, action.arguments, offered.get(name)) for name, action in actions.items()]
    calls.append(_call_schema(HANDOFF_TOOL, reason))
    return {"anyOf": [call for call in calls if call["properties"]["name"]["const"] not in excluded]}


def tool_call_grammar(
    actions: dict[str, Action], grounded: GroundedValues = (), *, excluded: tuple[str, ...] = ()
) -> str:
    """A Lark grammar (llguidance's dialect) of a whole call reply: optional leading whitespace,
    the opening tag, the JSON of `tool_call_schema`, the closing tag."""
    schema = dict(tool_call_schema(actions, grounded, excluded=excluded), **{"x-guidance": LAYOUT})
    return "\n".join(
        [
            f"start: SPACE? {json.dumps(TOOL_CALL_OPEN)} call {json.dumps(TOOL_CALL_CLOSE)}",
            r"SPACE: /[ \n]{1,2}/",  # bounded: a forced call can't be whitespace for ever
            f"call: %json {json.dumps(schema)}",
        ]
    )
