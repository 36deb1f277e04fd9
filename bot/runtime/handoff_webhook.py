"""Telling people that a conversation needs them: the handoff webhook in endpoints.yml gets a
POST with the conversation id, why it was handed over, and a short summary. A webhook that
fails is logged; the handoff itself stands (the conversation is already waiting)."""

from __future__ import annotations

import logging

import aiohttp

from bot.conversations.events import AGENT, BOT, HANDOFF, USER, Event

log = logging.getLogger("bot.runtime.handoff_webhook")
SUMMARY_MESSAGES = 6
SPEAKERS = {USER: "customer", BOT: "bot", AGENT: "agent"}  # the messages a summary is made of, and who wrote them


def summary(events: list[Event]) -> str:
    """The last few messages, one line each: what an agent reads first."""
    lines = []
    for event in events:
        if (who := SPEAKERS.get(event["type"])) and event.get("text"):
            lines.append(f"{who}: {event['text']}")
    return "\n".join(lines[-SUMMARY_MESSAGES:])


class HandoffNotifier:
    def __init__(self, session: aiohttp.ClientSession, url: str | None, timeout_s: float, store):
        self.session, self.url, self.store = session, url, store
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __call__(self, sender: str, handoff: Event) -> None:
        if not self.url:
            return
        body = {
            "event": HANDOFF,
            "sender": sender,
            "reason": handoff.get("reason") or "",
            "by": handoff.get("by"),
            "timestamp": handoff["timestamp"],
            "summary": summary(await self.store.events(sender, last=50)),
        }
        try:
            async with self.session.post(self.url, json=body, timeout=self.timeout) as response:
                if response.status >= 300:
                    log.warning(
                        "handoff webhook %s answered %s for conversation %s", self.url, response.status, sender
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("handoff webhook %s failed for conversation %s: %s", self.url, sender, e or type(e).__name__)
