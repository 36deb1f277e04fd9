"""The drafts admin API (bot/serve/routes/drafts.py): a draft from a stored conversation, list,
read, edit with validation in place, accept (200, 409 with the reason), reject; admin token."""

from __future__ import annotations

import pytest
from draft_support import store_conversation
from serve_support import ADMIN, make_project

from bot.conversations.events import action_executed, bot_message, user_message
from bot.serve.keys import STORE


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


def conversation() -> list[dict]:
    return [
        user_message("Hi, I'm Maria. Where is order ES-4821? Email me at maria@shop.test"),
        action_executed("check_order", {"order_id": "ES-4821"}, {"status": "shipped", "eta": "2026-12-02"}),
        bot_message("Order ES-4821 has shipped, Maria, and should arrive on 2 December."),
    ]


async def test_a_draft_from_a_conversation_is_redacted_edited_in_place_and_accepted(project, serve):
    client, _ = await serve(project)
    await store_conversation(client.app[STORE], "web-1", conversation())

    made = await client.post("/api/conversations/web-1/draft", headers=ADMIN)
    assert made.status == 201
    body = await made.json()
    assert body["name"] == "conversation-web-1" and body["valid"] is True and body["problems"] == []
    assert body["redacted"] == {"email": 1, "order": 1, "name": 1}
    assert "Maria" not in body["text"] and "ES-4821" not in body["text"] and "maria@shop.test" not in body["text"]
    assert (project / "training_data" / "drafts" / "conversation-web-1.yml").read_text() == body["text"]

    listed = await (await client.get("/api/drafts", headers=ADMIN)).json()
    assert listed == {"drafts": [{"name": "conversation-web-1", "valid": True, "problems": [], "source": "web-1"}]}
    got = await (await client.get("/api/drafts/conversation-web-1", headers=ADMIN)).json()
    assert got == {"name": "conversation-web-1", "text": body["text"], "valid": True, "problems": []}

    # A person breaks it while editing: saved anyway, the problem on its line.
    broken = body["text"].replace("      - action: check_order", "      - action: chek_order")
    saved = await client.put("/api/drafts/conversation-web-1", json={"text": broken}, headers=ADMIN)
    assert saved.status == 200
    answer = await saved.json()
    line = broken.splitlines().index("      - action: chek_order") + 1
    assert answer["valid"] is False and answer["text"] == broken
    assert [(p["line"], p["message"]) for p in answer["problems"]] == [
        (line, "unknown action 'chek_order' (did you mean 'check_order'?): declare it in actions.yml")
    ]
    assert answer["problems"][0]["where"].startswith(f"training_data/drafts/conversation-web-1.yml:{line}:")
    refused = await client.post("/api/drafts/conversation-web-1/accept", json={"into": "dialogues"}, headers=ADMIN)
    assert refused.status == 409 and "not valid" in (await refused.json())["error"]

    fixed = await (
        await client.put("/api/drafts/conversation-web-1", json={"text": body["text"]}, headers=ADMIN)
    ).json()
    assert fixed["valid"] is True
    accepted = await client.post("/api/drafts/conversation-web-1/accept", json={"into": "dialogues"}, headers=ADMIN)
    assert accepted.status == 200
    assert await accepted.json() == {"path": "training_data/dialogues/conversation-web-1.yml"}
    text = (project / "training_data" / "dialogues" / "conversation-web-1.yml").read_text()
    assert "draft: true" not in text and "source: web-1" in text
    assert (await client.get("/api/drafts/conversation-web-1", headers=ADMIN)).status == 404

    # The same conversation drafted again: a duplicate in dialogues/, a leak into tests/.
    again = await (await client.post("/api/conversations/web-1/draft", headers=ADMIN)).json()
    assert again["name"] == "conversation-web-1-2"
    for into, reason in (
        ("dialogues", "duplicate of dialogue 'conversation-web-1'"),
        ("tests", "a training conversation can't go into the tests"),
    ):
        response = await client.post("/api/drafts/conversation-web-1-2/accept", json={"into": into}, headers=ADMIN)
        assert response.status == 409 and reason in (await response.json())["error"]
    rejected = await client.post("/api/drafts/conversation-web-1-2/reject", headers=ADMIN)
    assert rejected.status == 200 and await rejected.json() == {"rejected": "conversation-web-1-2"}
    assert await (await client.get("/api/drafts", headers=ADMIN)).json() == {"drafts": []}


async def test_unknown_drafts_and_conversations_are_404_and_bodies_are_checked(project, serve):
    client, _ = await serve(project)
    assert (await client.post("/api/conversations/nobody/draft", headers=ADMIN)).status == 404
    for method, path, body in [
        ("GET", "/api/drafts/nothing", None),
        ("PUT", "/api/drafts/nothing", {"text": "dialogues: []"}),
        ("POST", "/api/drafts/nothing/accept", {"into": "tests"}),
        ("POST", "/api/drafts/nothing/reject", None),
    ]:
        response = await client.request(method, path, json=body, headers=ADMIN)
        assert response.status == 404, (method, path)
        assert "no draft named 'nothing'" in (await response.json())["error"]
    (project / "training_data" / "drafts").mkdir()
    (project / "training_data" / "drafts" / "d.yml").write_text("dialogues: []\n")
    bad = await client.post("/api/drafts/d/accept", json={"into": "elsewhere"}, headers=ADMIN)
    assert bad.status == 400
    assert (await client.put("/api/drafts/d", json={"txt": "x"}, headers=ADMIN)).status == 400


async def test_every_drafts_route_needs_the_admin_token(tmp_path, cache_dir, serve):
    # no wait after wrong tokens
    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  admin_failures_allowed: 100\n")
    client, _ = await serve(project)
    await store_conversation(client.app[STORE], "web-2", conversation())
    routes = [
        ("GET", "/api/drafts", None),
        ("GET", "/api/drafts/x", None),
        ("PUT", "/api/drafts/x", {"text": ""}),
        ("POST", "/api/drafts/x/accept", {"into": "tests"}),
        ("POST", "/api/drafts/x/reject", None),
        ("POST", "/api/conversations/web-2/draft", None),
    ]
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status == 401, (method, path)
    assert not (project / "training_data" / "drafts").exists()
