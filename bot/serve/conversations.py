"""Stored conversations around the reply loop (Responder): the customer's message is stored before the
model starts, each event the moment it happens, and one conversation answers one message at a
time (the store's lock), while different conversations proceed concurrently."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from bot.config import ServeConfig
from bot.serve.conversation_search import latest_ratings
from bot.serve.events import BOT, HANDOFF, VISIBLE, Event, user_message
from bot.serve.recovery import mark_if_unanswered
from bot.serve.responder import Piece, Responder, fold, to_messages
from bot.serve.store import ConversationStore


@dataclass(frozen=True)
class Waiting:
    """The conversation is with a person: the bot does not answer."""

    reason: str | None


# What the customer sees of each event type, in the history and as it happens.


def visible(event: Event) -> dict[str, Any]:
    """An event as the widget shows it (no tool arguments, no internal details)."""
    shown = {"seq": event["seq"], "type": event["type"], "timestamp": event["timestamp"]}
    for key in ("text", "buttons", "agent", "of"):
        if event.get(key) is not None:
            shown[key] = event[key]
    return shown


class Conversations:
    def __init__(
        self,
        store: ConversationStore,
        responder: Responder,
        config: ServeConfig,
        on_handoff: Callable[[str, Event], Awaitable[None]] | None = None,
    ):
        self.store = store
        self.responder = responder
        self.config = config
        self.on_handoff = on_handoff

    async def handle(
        self, sender: str, text: str, metadata: dict | None = None
    ) -> AsyncIterator[Piece | Event | Waiting]:
        """Answer one customer message; yields the stored message, then Pieces as the reply is
        written and each event as it is stored."""
        async with self.store.lock(sender, self.config.lock_timeout_s):
            await mark_if_unanswered(self.store, sender)  # a reply cut by a crash that startup did not mark
            latest = await self.store.append(sender, user_message(text, metadata))
            yield latest
            # the recent events, not the whole conversation
            events, state_events = await self.store.context(sender, self.config.history_events)
            state = fold(state_events)
            state.recent = events
            if state.handed_off:
                yield Waiting(state.handoff_reason)
                return
            async with self.responder.holder.borrow() as model:  # one model for the whole answer, even across a reload
                messages = to_messages(events, model.profile.system_prompt)
                answer = self.responder.answer(model, messages, sender=sender, state=state, latest=latest)
                async with aclosing(answer) as items:
                    async for item in items:
                        if isinstance(item, dict):
                            item = await self.store.append(sender, item)
                            if item["type"] == HANDOFF and self.on_handoff:
                                await self.on_handoff(sender, item)
                        yield item

    async def history(self, sender: str) -> list[dict]:
        """The visible events; a bot message the customer rated carries its vote (`rating`)."""
        events = await self.store.events(sender)
        votes = latest_ratings(events)
        shown = [visible(e) for e in events if e["type"] in VISIBLE]
        for event in shown:
            if event["type"] == BOT and event["seq"] in votes:
                event["rating"] = votes[event["seq"]]["rating"]
        return shown
