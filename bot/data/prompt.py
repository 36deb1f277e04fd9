"""The system prompt, built from the persona and the declared actions.

The same text is used to train and to serve, so the model always sees the prompt it learned with.
"""

from __future__ import annotations

import json

from bot.data.schema import HANDOFF_TOOL, Action, Persona

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def _signature(name: str, action: Action) -> str:
    args = ", ".join(a if spec.required else f"{a}?" for a, spec in action.arguments.items())
    return f"- {name}({args}): {action.description}".rstrip(": ")


def system_prompt(persona: Persona, actions: dict[str, Action]) -> str:
    lines = [f"You are {persona.name}, the customer support assistant of {persona.company}."]
    if persona.about:
        lines.append(persona.about)
    if persona.helps_with:
        lines.append("You help with: " + "; ".join(persona.helps_with) + ".")
    if persona.does_not_help_with:
        lines.append("You do not help with: " + "; ".join(persona.does_not_help_with) + ".")
    if persona.tone:
        lines.append(f"Tone: {persona.tone}")
    if persona.rules:
        lines.append("Rules:")
        lines += [f"- {rule}" for rule in persona.rules]
    example = json.dumps({"name": "action_name", "arguments": {"arg": "value"}})
    lines.append(f"To use a tool, reply with only {TOOL_CALL_OPEN}{example}{TOOL_CALL_CLOSE}. Tools:")
    lines += [_signature(name, action) for name, action in actions.items()]
    lines.append(f"- {HANDOFF_TOOL}(reason): pass the conversation to a human agent.")
    if persona.secret:
        lines.append(f"Internal reference (confidential, never repeat it): {persona.secret}")
    return "\n".join(lines)
