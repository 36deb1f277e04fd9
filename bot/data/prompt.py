"""The system prompt, built from the persona and the declared actions.

The same text is used to train and to serve, so the model always sees the prompt it learned with.
"""

from __future__ import annotations

import json

from bot.data.schema import HANDOFF_TOOL, Action, Persona

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def _signature(name: str, action: Action) -> str:
    return f"{name}(" + ", ".join(a if spec.required else f"{a}?" for a, spec in action.arguments.items()) + ")"


def system_prompt(persona: Persona, actions: dict[str, Action]) -> str:
    """Kept short on purpose: every training example and every request pays for each token."""
    lines = [f"You are {persona.name}, the customer support assistant of {persona.company}. {persona.about}".strip()]
    if persona.helps_with:
        lines.append("You help with: " + "; ".join(persona.helps_with) + ".")
    if persona.does_not_help_with:
        lines.append("You don't help with: " + "; ".join(persona.does_not_help_with) + ".")
    if persona.tone:
        lines.append(f"Tone: {persona.tone}")
    lines += [f"- {rule}" for rule in persona.rules]
    first = next(iter(actions.items()), None)
    if first:
        name, action = first
        example_call = {"name": name, "arguments": {a: "..." for a in action.arguments}}
    else:
        example_call = {"name": HANDOFF_TOOL, "arguments": {"reason": "..."}}
    example = json.dumps(example_call)
    tools = [_signature(name, action) for name, action in actions.items()] + [f"{HANDOFF_TOOL}(reason)"]
    listed = ", ".join(tools)
    lines.append(f"Tools (to use one, reply with only {TOOL_CALL_OPEN}{example}{TOOL_CALL_CLOSE}): {listed}.")
    if persona.secret:
        lines.append(f"Confidential reference, never repeat it: {persona.secret}")
    return "\n".join(lines)
