"""How the fixtures in this folder were made: run once with the stores of commit 28fdf1c (the
schema before migrations existed), never since, so they stay what that code wrote.

    PYTHONPATH=. python tests/data/stores_v1/make.py

- sqlite.sqlite3: SQLiteStore's file;
- redis.json: every key RedisStore wrote (without its `bot:` prefix), by type.

PostgresStore wrote that commit's DDL, which is its first migration, and the same rows as the
SQLite file: tests/test_migrations.py builds its old database from those two.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from bot.conversations.events import new_event
from bot.conversations.store import SQLiteStore
from bot.conversations.store_redis import RedisStore

HERE = Path(__file__).parent
REDIS = "redis://127.0.0.1:6379/14"


def conversations() -> dict[str, list[dict]]:
    clock = iter(range(1_790_000_000, 1_790_001_000, 7))

    def event(type_, **fields):
        return dict(new_event(type_, **fields), timestamp=float(next(clock)))

    return {
        "alice": [
            event("user", text="Where is my order ES-1001?", metadata={"page": "/orders"}),
            event(
                "action",
                name="check_order",
                arguments={"order_id": "ES-1001"},
                result={"status": "shipped", "note": "é 日本"},
            ),
            event("slot", name="order_id", value="ES-1001"),
            event("bot", text="It shipped yesterday."),
            event("user", text="Thanks!"),
            event("bot", text="You're welcome.", buttons=[{"title": "More", "payload": "more"}]),
        ],
        "bob": [
            event("user", text="I want a person."),
            event("handoff", reason="asked for a person", text="I'm passing you to a colleague."),
            event("user", text="Hello?"),
            event("agent", text="Hi, I'm Alex.", agent="Alex"),
        ],
        "carol": [
            event("user", text="Cancel my plan."),
            event("bot", text="Sorry to hear that. Which plan?"),
            event("user", text="The gold one."),
        ],
    }


async def main() -> None:
    convs = conversations()
    order = [(sender, e) for i in range(6) for sender, events in convs.items() if i < len(events) for e in [events[i]]]

    path = HERE / "sqlite.sqlite3"
    path.unlink(missing_ok=True)
    sqlite = SQLiteStore(path)
    for sender, e in order:
        await sqlite.append(sender, e)
    await sqlite.close()

    prefix = f"fixture-{uuid.uuid4().hex[:8]}:"
    redis = await RedisStore.connect(REDIS)
    import bot.conversations.store_redis as layout

    layout.PREFIX = prefix  # that commit's key names, under a prefix of its own
    try:
        for sender, e in order:
            await redis.append(sender, e)
        await redis.context("alice", 20)  # a conversation that has been answered since: its state list is built
        keys: dict = {}
        for key in sorted(await redis._redis.keys(prefix + "*")):
            kind = await redis._redis.type(key)
            if kind == "list":
                value = await redis._redis.lrange(key, 0, -1)
            else:
                value = await redis._redis.zrange(key, 0, -1, withscores=True)
            keys[key.removeprefix(prefix)] = {"type": kind, "value": value}
            await redis._redis.delete(key)
    finally:
        await redis.close()
    (HERE / "redis.json").write_text(json.dumps(keys, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
