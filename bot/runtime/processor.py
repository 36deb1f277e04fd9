"""Stored conversations around the reply policy (bot.policy.reply): the customer's message is stored before the
model starts, each event the moment it happens, and one conversation answers one message at a
time (the store's lock), while different conversations proceed concurrently."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from bot.config import ServeConfig
from bot.conversations.events import BOT, HANDOFF, VISIBLE, Event, agent_message, handed_off, resumed, user_message
from bot.conversations.recovery import mark_if_unanswered
from bot.conversations.search import latest_ratings
from bot.conversations.state import fold
from bot.conversations.store import ConversationStore
from bot.errors import BotError
from bot.policy.context import to_messages
from bot.policy.reply import Piece, ReplyPolicy
from bot.runtime.model_holder import ModelHolder

TAKEN_OVER = "taken over by an agent"  # the reason of the handoff an agent's first message makes


class NotWithAgent(BotError):
    """Only a conversation that a person has can be given back to the bot."""


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
        holder: ModelHolder,
        policy: ReplyPolicy,
        config: ServeConfig,
        on_handoff: Callable[[str, Event], Awaitable[None]] | None = None,
    ):
        self.store = store
        self.holder = holder
        self.policy = policy
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
            async with self.holder.borrow() as model:  # one model for the whole answer, even across a reload
                messages = to_messages(events, model.profile.system_prompt)
                answer = self.policy.answer(model, messages, sender=sender, state=state, latest=latest)
                async with aclosing(answer) as items:
                    async for item in items:
                        if isinstance(item, dict):
                            item = await self.store.append(sender, item)
                            if item["type"] == HANDOFF and self.on_handoff:
                                await self.on_handoff(sender, item)
                        yield item

    async def write_as_agent(self, sender: str, text: str, agent: str | None = None) -> tuple[Event, Event | None]:
        """A human agent's message, which takes the conversation over from the bot if it still has
        it: (the stored message, the stored takeover or None)."""
        async with self.store.lock(sender, self.config.lock_timeout_s):  # after any reply being written
            taken = None
            if not fold(await self.store.events(sender)).handed_off:
                taken = await self.store.append(sender, handed_off("agent", TAKEN_OVER, agent=agent))
            event = await self.store.append(sender, agent_message(text, agent))
        return event, taken

    async def give_back(self, sender: str) -> Event:
        """The agent gives the conversation back to the bot; NotWithAgent if no person has it."""
        async with self.store.lock(sender, self.config.lock_timeout_s):
            if not fold(await self.store.events(sender)).handed_off:
                raise NotWithAgent(f"conversation '{sender}' is not with an agent")
            return await self.store.append(sender, resumed())

    async def history(self, sender: str) -> list[dict]:
        """The visible events; a bot message the customer rated carries its vote (`rating`)."""
        events = await self.store.events(sender)
        votes = latest_ratings(events)
        shown = [visible(e) for e in events if e["type"] in VISIBLE]
        for event in shown:
            if event["type"] == BOT and event["seq"] in votes:
                event["rating"] = votes[event["seq"]]["rating"]
        return shown
