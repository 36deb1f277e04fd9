"""The state a conversation's events add up to: its slots, whether a person has it, and the
latest events (what an action's tracker shows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.conversations.events import HANDOFF, RESET_SLOTS, RESUME, SLOT, Event


@dataclass
class ConversationState:
    slots: dict[str, Any] = field(default_factory=dict)
    handed_off: bool = False
    handoff_reason: str | None = None
    recent: list[Event] = field(default_factory=list)  # the latest events, for an action's tracker

    def apply(self, event: Event) -> None:
        """Takes in one more event of the conversation."""
        if event["type"] == SLOT:
            self.slots[event["name"]] = event.get("value")
        elif event["type"] == RESET_SLOTS:
            self.slots.clear()
        elif event["type"] == HANDOFF:
            self.handed_off, self.handoff_reason = True, event.get("reason")
        elif event["type"] == RESUME:
            self.handed_off = False


def fold(events: list[Event]) -> ConversationState:
    """The state a conversation's events add up to."""
    state = ConversationState(recent=events)
    for event in events:
        state.apply(event)
    return state
