"""Finding stored conversations by what happened in them: since when they were active, whether
a person took them over, how customers rated the bot's messages, and words in them. Used by the
operator console's list and by `bot data export`'s filters, so both find the same conversations.

A rating is an event (bot.conversations.events.rating) stored in the conversation it rates; a customer
may change a vote: the latest rating event for a message is the one that counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bot.conversations.events import HANDOFF, RATING, USER, Event
from bot.conversations.store import ConversationStore, ConversationSummary

Rating = Literal["up", "down"]


def latest_ratings(events: list[Event]) -> dict[int, Event]:
    """The rating that counts for each rated message: {rated seq: its latest rating event}."""
    return {e["rated_seq"]: e for e in events if e["type"] == RATING}


@dataclass(frozen=True)
class ConversationFilter:
    since: float | None = None  # last active at or after this timestamp
    handed_off: bool = False  # only conversations a person was asked for or took over
    rated: Rating | None = None  # only conversations with at least one message rated so
    text: str | None = None  # only conversations with this text (case-insensitive) in a message or the id


@dataclass
class FoundConversation:
    summary: ConversationSummary
    handed_off: bool
    ratings: dict[str, int] = field(default_factory=dict)  # {"up": n, "down": n}, counting latest votes
    last_customer_message: str | None = None

    @property
    def sender(self) -> str:
        return self.summary.sender


def describe(summary: ConversationSummary, events: list[Event]) -> FoundConversation:
    votes = [e["rating"] for e in latest_ratings(events).values()]
    return FoundConversation(
        summary=summary,
        handed_off=any(e["type"] == HANDOFF for e in events),
        ratings={"up": votes.count("up"), "down": votes.count("down")},
        last_customer_message=next((e.get("text") for e in reversed(events) if e["type"] == USER), None),
    )


def matches(found: FoundConversation, events: list[Event], wanted: ConversationFilter) -> bool:
    if wanted.since is not None and found.summary.last_active < wanted.since:
        return False
    if wanted.handed_off and not found.handed_off:
        return False
    if wanted.rated and not found.ratings.get(wanted.rated):
        return False
    if wanted.text:
        needle = wanted.text.casefold()
        texts = [found.sender, *(e.get("text") or "" for e in events)]
        return any(needle in text.casefold() for text in texts)
    return True


async def find_conversations(
    store: ConversationStore, wanted: ConversationFilter = ConversationFilter(), limit: int | None = None
) -> list[FoundConversation]:
    """The conversations that match, most recently active first (at most `limit`)."""
    found = []
    for summary in await store.conversations():
        if wanted.since is not None and summary.last_active < wanted.since:
            continue  # no need to read it
        events = await store.events(summary.sender)
        described = describe(summary, events)
        if matches(described, events, wanted):
            found.append(described)
            if limit is not None and len(found) >= limit:
                break
    return found
