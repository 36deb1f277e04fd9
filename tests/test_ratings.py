"""Customers rating the bot's messages (POST /api/conversations/{sender}/ratings): the stored
rating event, the metric, changing a vote, the history giving votes back, and clear errors."""

from __future__ import annotations

import pytest
from serve_support import make_project

from bot.conversations.events import agent_message
from bot.conversations.search import RATING, latest_ratings
from bot.serve.keys import STORE


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


async def _chatted(client, sender: str) -> tuple[int, int]:
    """(seq of the customer's message, seq of the bot's reply) of a one-turn conversation."""
    response = await client.post("/webhooks/rest/webhook", json={"sender": sender, "message": "where is my order?"})
    assert response.status == 200
    events = (await (await client.get(f"/api/conversations/{sender}")).json())["events"]
    assert [e["type"] for e in events] == ["user", "bot"]
    return events[0]["seq"], events[1]["seq"]


def _counted(metrics: str, rating: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(f'bot_ratings_total{{rating="{rating}"}}'))
    return float(line.split()[-1])


async def test_a_vote_is_stored_counted_changed_and_given_back_with_the_history(project, serve):
    client, _ = await serve(project, ["It left the warehouse today."])
    _, bot = await _chatted(client, "r-1")
    metrics = await (await client.get("/metrics")).text()
    assert _counted(metrics, "up") == 0 and _counted(metrics, "down") == 0

    response = await client.post(
        "/api/conversations/r-1/ratings", json={"seq": bot, "rating": "down", "comment": "  It did not.  "}
    )
    assert response.status == 200
    assert await response.json() == {"sender": "r-1", "seq": bot, "rating": "down", "comment": "It did not."}
    stored = await client.app[STORE].events("r-1")
    rating = {k: v for k, v in stored[-1].items() if k not in ("seq", "timestamp")}
    assert rating == {"type": RATING, "rated_seq": bot, "rating": "down", "comment": "It did not."}

    history = (await (await client.get("/api/conversations/r-1")).json())["events"]
    # the rating event itself is not shown
    assert [(e["type"], e.get("rating")) for e in history] == [
        ("user", None),
        ("bot", "down"),
    ]
    assert set(history[1]) == {"seq", "type", "timestamp", "text", "rating"}

    # The same vote again stores nothing; the other one changes it.
    again = {"seq": bot, "rating": "down", "comment": "It did not."}
    assert (await client.post("/api/conversations/r-1/ratings", json=again)).status == 200
    assert len(await client.app[STORE].events("r-1")) == 3
    response = await client.post("/api/conversations/r-1/ratings", json={"seq": bot, "rating": "up"})
    assert await response.json() == {"sender": "r-1", "seq": bot, "rating": "up"}
    events = await client.app[STORE].events("r-1")
    assert [e["type"] for e in events] == ["user", "bot", RATING, RATING]
    assert latest_ratings(events)[bot]["rating"] == "up"
    assert "comment" not in events[-1]
    history = (await (await client.get("/api/conversations/r-1")).json())["events"]
    assert history[1]["rating"] == "up"

    metrics = await (await client.get("/metrics")).text()
    assert _counted(metrics, "down") == 1 and _counted(metrics, "up") == 1


async def test_only_a_bot_message_of_the_conversation_can_be_rated(project, serve):
    client, _ = await serve(project, ["Happy to help."])
    user, bot = await _chatted(client, "r-2")
    await client.app[STORE].append("r-2", agent_message("Hi, I'm Alex.", name="Alex"))
    agent = (await client.app[STORE].events("r-2"))[-1]["seq"]
    for sender, seq, what in (
        ("r-2", user, user),
        ("r-2", agent, agent),
        ("r-2", bot + 1000, bot + 1000),
        ("nobody", bot, bot),
    ):
        response = await client.post(f"/api/conversations/{sender}/ratings", json={"seq": seq, "rating": "up"})
        assert response.status == 404
        error = (await response.json())["error"]
        assert (
            error
            == f"conversation '{sender}' has no bot message with seq {what}: only the bot's messages can be rated"
        )
    assert [e["type"] for e in await client.app[STORE].events("r-2")] == ["user", "bot", "agent"]  # nothing stored
    metrics = await (await client.get("/metrics")).text()
    assert _counted(metrics, "up") == 0


@pytest.mark.parametrize(
    "body, problem",
    [
        ("{not json", "request body is not valid JSON"),
        ('{"seq": 2}', "rating: Field required"),
        ('{"seq": 2, "rating": "meh"}', "rating: Input should be 'up' or 'down'"),
        ('{"seq": "2", "rating": "up"}', "seq: Input should be a valid integer"),
        ('{"seq": true, "rating": "up"}', "seq: Input should be a valid integer"),
        ('{"seq": 0, "rating": "up"}', "seq: Input should be greater than or equal to 1"),
        ('{"seq": 2, "rating": "up", "stars": 5}', "stars: Extra inputs are not permitted"),
        (
            '{"seq": 2, "rating": "up", "comment": "' + "x" * 1001 + '"}',
            "comment: String should have at most 1000 characters",
        ),
        ("[]", "body: Input should be a valid dictionary"),
    ],
)
async def test_a_malformed_body_gets_a_clear_400_and_no_traceback(project, serve, body, problem):
    client, _ = await serve(project)
    response = await client.post(
        "/api/conversations/r-3/ratings", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert problem in error and "Traceback" not in error
    assert await client.app[STORE].events("r-3") == []


async def test_a_bad_conversation_id_is_refused(project, serve):
    client, _ = await serve(project)
    response = await client.post("/api/conversations/a%20b/ratings", json={"seq": 1, "rating": "up"})
    assert response.status == 400 and (await response.json())["error"] == "invalid conversation id"


async def test_the_route_is_documented_without_an_admin_token(project, serve):
    client, _ = await serve(project)
    doc = await (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/api/conversations/{sender}/ratings"]["post"]
    assert "security" not in operation
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RatingRequest"
    }
    assert {"200", "400", "404", "413", "429", "503"} <= set(operation["responses"])
    schema = doc["components"]["schemas"]["RatingRequest"]
    assert schema["properties"]["rating"]["enum"] == ["up", "down"] and schema["required"] == ["seq", "rating"]
