"""A stored conversation as the reply policy reads it: the model's context, in the training
format of bot.data.compiler, and where grounded argument values may come from."""

from __future__ import annotations

import json
import re

from bot.conversations.events import ACTION, AGENT, BOT, HANDOFF, USER, Event
from bot.data.compiler import tool_call_message
from bot.data.schema import HANDOFF_TOOL

# The bot offering to pass the customer to a person: "Shall I pass you to a colleague?", "I can
# put you through to our team", "A member of our team can look at that, would you like me to?"
PERSON_OFFERED = re.compile(
    r"(?i)\b(?:pass|put|transfer|connect|hand|refer)(?:ing)? (?:you|this|it)\b"
    r"|\b(?:colleagues?|agents?|advis[eo]rs?|member of (?:our|the) team|our team)\b"
)


def handoff_unprompted(messages: list[dict]) -> bool:
    """Whether a handoff now would come out of the blue: the step answers a customer's message
    (not an action's result) and the bot's last message before it offered no person. (Whether
    the customer asked for one is the person-request detector's to say.)"""
    if not messages or messages[-1]["role"] != "user":
        return False
    said = [m.get("content") for m in messages[:-1] if m["role"] == "assistant" and m.get("content")]
    return not (said and PERSON_OFFERED.search(said[-1]))


def conversation_sources(messages: list[dict]) -> list[str]:
    """What the customer wrote and what actions returned: where a grounded argument must come from."""
    return [m.get("content") or "" for m in messages if m["role"] in ("user", "tool")]


def customer_messages(messages: list[dict]) -> list[str]:
    """What the customer wrote, message by message (among `conversation_sources`)."""
    return [m.get("content") or "" for m in messages if m["role"] == "user"]


def to_messages(events: list[Event], system_prompt: str) -> list[dict]:
    """A stored conversation as the model's context, in the training format (bot.data.compiler).

    Every event type has its rendering here, and an event missing an optional field never
    breaks it:
    - `user`: a user message (an empty one stays, empty);
    - `bot` and `agent` with text: an assistant message (an agent speaks for the company);
    - `bot` without text (an action's buttons or image alone): nothing, because what the buttons
      offer is in that action's result, which the model has already read;
    - `action`: the call and its result, as training shows them;
    - `handoff` by the model or the person rule: the handoff call (by an agent or an action: nothing);
    - everything else (slots, ratings, refused calls, guard records, interruptions, resumes):
      nothing; a refused call's apology is the `bot` event after it.
    """
    messages: list[dict] = [{"role": "system", "content": system_prompt}]
    for event in events:
        kind = event.get("type")
        if kind == USER:
            messages.append({"role": "user", "content": event.get("text") or ""})
        elif kind in (BOT, AGENT) and event.get("text"):
            messages.append({"role": "assistant", "content": event["text"]})
        elif kind == ACTION:
            call_id = f"call_{event.get('seq', len(messages))}"
            messages.append(tool_call_message(call_id, event.get("name", ""), event.get("arguments") or {}))
            result = json.dumps(event.get("result"), ensure_ascii=False)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        elif kind == HANDOFF and event.get("by") in ("model", "rule"):
            call_id = f"call_{event.get('seq', len(messages))}"
            messages.append(tool_call_message(call_id, HANDOFF_TOOL, {"reason": event.get("reason") or ""}))
    return messages
