"""Finding conversations by activity, handoff, rating and text (shared by the console and export)."""

from __future__ import annotations

import time

from bot.conversations.events import new_event
from bot.conversations.search import RATING, ConversationFilter, find_conversations, latest_ratings
from bot.conversations.store import SQLiteStore


async def _store(tmp_path):
    store = SQLiteStore(tmp_path / "c.sqlite3")
    talk = [("user", "my router is broken", 100.0), ("bot", "Sorry to hear that.", 101.0)]
    for sender, start in (("calm", 0.0), ("angry", 1000.0), ("handed", 2000.0)):
        for kind, text, at in talk:
            await store.append(sender, dict(new_event(kind, text=text), timestamp=start + at))
    await store.append("angry", new_event(RATING, rated_seq=5, rating="up"))
    await store.append("angry", new_event(RATING, rated_seq=5, rating="down", comment="useless"))  # changed vote
    await store.append("calm", new_event(RATING, rated_seq=2, rating="up"))
    await store.append("handed", new_event("handoff", reason="asked for a person"))
    return store


async def test_filters_find_the_right_conversations(tmp_path):
    store = await _store(tmp_path)
    try:
        everything = await find_conversations(store)
        assert {c.sender for c in everything} == {"calm", "angry", "handed"}
        assert [c.sender for c in await find_conversations(store, ConversationFilter(rated="down"))] == ["angry"]
        assert [c.sender for c in await find_conversations(store, ConversationFilter(rated="up"))] == ["calm"]
        assert [c.sender for c in await find_conversations(store, ConversationFilter(handed_off=True))] == ["handed"]
        recent = await find_conversations(store, ConversationFilter(since=1500.0))
        assert [c.sender for c in recent if c.summary.last_active < 1500.0] == []
        # every conversation's last event (a rating, a handoff) is stamped now: all are recent, none is future
        assert {c.sender for c in recent} == {"calm", "angry", "handed"}
        assert await find_conversations(store, ConversationFilter(since=time.time() + 3600)) == []
        # a conversation last active at 500 is found since 400, not since 1500
        await store.append("quiet", dict(new_event("user", text="hello?"), timestamp=500.0))
        assert "quiet" in {c.sender for c in await find_conversations(store, ConversationFilter(since=400.0))}
        assert "quiet" not in {c.sender for c in await find_conversations(store, ConversationFilter(since=1500.0))}
        assert {c.sender for c in await find_conversations(store, ConversationFilter(text="ROUTER"))} == {
            "calm",
            "angry",
            "handed",
        }
        assert [c.sender for c in await find_conversations(store, ConversationFilter(text="ang"))] == ["angry"]
        assert await find_conversations(store, ConversationFilter(text="no such words")) == []
        angry = next(c for c in everything if c.sender == "angry")
        assert angry.ratings == {"up": 0, "down": 1} and angry.last_customer_message == "my router is broken"
        assert len(await find_conversations(store, limit=2)) == 2
    finally:
        await store.close()


def test_the_latest_vote_on_a_message_counts():
    events = [
        {"type": RATING, "rated_seq": 3, "rating": "up", "seq": 10},
        {"type": "user", "text": "hi", "seq": 11},
        {"type": RATING, "rated_seq": 3, "rating": "down", "seq": 12},
        {"type": RATING, "rated_seq": 7, "rating": "up", "seq": 13},
    ]
    assert {seq: e["rating"] for seq, e in latest_ratings(events).items()} == {3: "down", 7: "up"}
