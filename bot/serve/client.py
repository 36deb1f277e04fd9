"""A client of the server's chat stream (`POST /api/chat/stream`, server-sent events), for
`bot chat --url` and the serving benchmarks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

from bot.errors import BotError


async def chat_events(
    session: aiohttp.ClientSession, url: str, sender: str, message: str
) -> AsyncIterator[tuple[str | None, dict]]:
    """(event name, data) of each server-sent event of the reply to `message`."""
    try:
        async with session.post(
            f"{url.rstrip('/')}/api/chat/stream", json={"sender": sender, "message": message}
        ) as response:
            if response.status != 200:
                raise BotError(f"{url} answered {response.status}: {(await response.text())[:300]}")
            event = None
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    yield event, json.loads(line[6:])
    except aiohttp.ClientError as e:
        raise BotError(f"can't reach the bot at {url}: {e}") from None
