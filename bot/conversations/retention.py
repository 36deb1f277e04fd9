"""Conversations are kept for `tracker_store.retention_days` of inactivity (endpoints.yml; null,
the default, keeps them forever). `bot serve` deletes the older ones when it starts, then every
hour, in a task beside the server that stops with it (bot.serve.app: the first pass runs before
the crash-recovery pass, which would otherwise mark a stale conversation's unanswered last
message `interrupted` and so make it look active). Only how many were deleted is logged:
never their ids or what they said."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.conversations.store import ConversationStore
from bot.errors import BotError

DAY_S = 24 * 3600.0
EVERY_S = 3600.0

log = logging.getLogger("bot.serve")


async def forget_inactive_conversations(store: ConversationStore, days: float, now: float | None = None) -> int:
    """Delete the conversations whose last event is more than `days` old; how many there were."""
    forgotten = await store.forget_inactive((time.time() if now is None else now) - days * DAY_S)
    if forgotten:
        log.info("retention: deleted %d conversations inactive for more than %g days", len(forgotten), days)
    return len(forgotten)


class Retention:
    """The passes: `run_once()` deletes; `repeat()` does it every `every_s` until it is cancelled.
    A store error is logged and the next pass tries again; it never stops the server."""

    def __init__(self, store: ConversationStore, days: float, every_s: float = EVERY_S):
        self.store, self.days, self.every_s = store, days, every_s
        self.passes = 0  # passes done, failed ones included
        self.deleted = 0  # conversations deleted in all
        self.passed = asyncio.Event()  # set after each pass (cleared by whoever waits for the next)

    async def run_once(self) -> None:
        try:
            self.deleted += await forget_inactive_conversations(self.store, self.days)
        except Exception as e:  # the store is down for a moment: the next pass tries again
            # a typed error's message says enough
            reason = e if isinstance(e, BotError) else f"{type(e).__name__}: {e}"
            log.warning("retention: could not delete old conversations: %s", reason)
        self.passes += 1
        self.passed.set()

    async def repeat(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.run_once()


def retention_of(store: ConversationStore, days: float | None) -> Retention | None:
    """The retention of `tracker_store.retention_days`; None when it is null (kept forever)."""
    if days is None:
        return None
    log.info(
        "conversations inactive for more than %g days are deleted (tracker_store.retention_days), "
        "at start and every %.0f minutes",
        days,
        EVERY_S / 60,
    )
    return Retention(store, days)
