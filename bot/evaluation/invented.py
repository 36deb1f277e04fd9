"""What the bot made up in a conversation: grounded values that reached an action although the
conversation never held them, and names in its messages that nobody gave ("Thanks, Marcus" to a
customer who never said a name). The conversation tests count both for every run; the target
for each is 0."""

from __future__ import annotations

import json
import re

from bot.conversations.events import ACTION, AGENT, BOT, USER, Event
from bot.data.grounding import ungrounded
from bot.data.schema import Action

# A name the bot addresses the customer by: a capitalised word after a greeting or thanks.
ADDRESSED = re.compile(
    r"\b(?:Thanks|Thank you|Hi|Hello|Hey|Cheers|Sorry|Welcome back|Great|Lovely|Perfect|Of course|Dear)"
    r",? ([A-Z][a-z]{2,})\b"
)
NOT_NAMES = frozenset(
    {"Thanks", "Thank", "That", "This", "The", "There", "Then", "You", "Your", "And", "For", "Again"}
)


def _said(event: Event) -> str:
    """What an event adds to what the conversation holds."""
    if event["type"] in (USER, AGENT):
        return event.get("text") or ""
    if event["type"] == ACTION:
        return json.dumps(event.get("result"), ensure_ascii=False)
    return ""


def invented_values(events: list[Event], actions: dict[str, Action]) -> list[str]:
    """Each action that ran with a grounded value found nowhere before it, as 'action arg=value'."""
    held, found = [], []
    for event in events:
        if event["type"] == ACTION and event.get("name") in actions:
            arguments = event.get("arguments") or {}
            for name in ungrounded(actions[event["name"]], arguments, held):
                found.append(f"{event['name']} {name}={json.dumps(arguments[name])}")
        held.append(_said(event))
    return found


def invented_names(events: list[Event], known: str = "") -> list[str]:
    """Names the bot's messages address someone by that appear nowhere before them (nor in
    `known`: the bot's own name and company)."""
    held, found = [known.lower()], []
    for event in events:
        if event["type"] == BOT:
            text = event.get("text") or ""
            for name in ADDRESSED.findall(text):
                if name not in NOT_NAMES and not any(name.lower() in h.lower() for h in held):
                    found.append(name)
        held.append(_said(event))
    return found
