"""Replies cut by a crash. A customer's message is stored before its reply is written, so after a
crash (SIGKILL, a power cut) a conversation can end with a message nobody answered. That reply is
marked with an `interrupted` event (`of`: the seq of the message), which the widget shows with a
"Try again" button:

- at startup, for each conversation whose last event is an unanswered customer message, under
  the conversation's lock taken without waiting: a conversation that another server process is
  answering right now is busy, and is tried again every second, for at most `retry_s`, by which
  time its reply is stored or its lock is free (a Redis lock whose holder died frees itself);
- before a customer's next message is stored, in case the startup pass did not reach it.

A conversation that is with a person is never marked: there the bot does not answer."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.conversations.events import USER, Event, interrupted
from bot.conversations.state import fold
from bot.conversations.store import ConversationBusy, ConversationStore
from bot.errors import BotError

TRY_LOCK_S = 0.1  # "without waiting", with time for one round trip to the store

log = logging.getLogger("bot.serve")


async def mark_if_unanswered(store: ConversationStore, sender: str, seq: int | None = None) -> Event | None:
    """With the conversation's lock held: if its last event is a customer message (the one with
    `seq`, when given) and no person has the conversation, store and return `interrupted`."""
    last = await store.events(sender, last=1)
    if not last or last[0]["type"] != USER or (seq is not None and last[0]["seq"] != seq):
        return None
    _, state = await store.context(sender, 0)
    if fold(state).handed_off:
        return None
    return await store.append(sender, interrupted(last[0]["seq"]))


async def mark_interrupted(store: ConversationStore, *, retry_s: float) -> list[Event]:
    """The startup pass: the `interrupted` events it stored."""
    marked: list[Event] = []
    pending = await store.unanswered()
    deadline = time.monotonic() + retry_s
    while pending:
        busy = []
        for sender, seq in pending:
            try:
                async with store.lock(sender, TRY_LOCK_S):
                    if event := await mark_if_unanswered(store, sender, seq):
                        marked.append(event)
            except ConversationBusy:
                busy.append((sender, seq))
        pending = busy
        if pending and time.monotonic() < deadline:
            await asyncio.sleep(1)
        elif pending:
            log.warning(
                "%d conversations were still busy after %.0f s; their replies were not marked interrupted",
                len(pending),
                retry_s,
            )
            break
    if marked:
        log.info("marked %d replies cut by a crash as interrupted", len(marked))
    return marked


async def mark_interrupted_in_background(store: ConversationStore, *, retry_s: float) -> None:
    """The startup pass as a task beside the server: a store error is logged, never raised."""
    try:
        await mark_interrupted(store, retry_s=retry_s)
    except Exception as e:  # the store failing here must not stop the server, which reports it on use
        reason = e if isinstance(e, BotError) else f"{type(e).__name__}: {e}"  # a typed error's message says enough
        log.warning("could not look for replies cut by a crash: %s", reason)
