"""The console's admin routes through aiohttp's test client: conversations found by rating,
handoff, words and date, each one's timeline; trained models with their figures, activation
(the served model swaps) and rolling back; the admin token on every one; the console's files."""

from __future__ import annotations

import pytest
from console_support import SUMMARY, active_model_loader, add_model, rate, talk
from serve_support import ADMIN, make_project, settings_of

from bot import models
from bot.serve.keys import STORE

CONSOLE_ROUTES = [
    ("GET", "/api/admin/conversations"),
    ("GET", "/api/admin/conversations/someone"),
    ("GET", "/api/models"),
    ("GET", "/api/models/m1/report"),
    ("POST", "/api/models/m1/activate"),
]


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


async def _stored(client):
    store = client.server.app[STORE]
    happy = await talk(store, "happy-1", [("hi", "Hello!")], start=1_700_000_000.0)  # 2023-11-14
    await rate(store, "happy-1", happy[1]["seq"], "up", at=1_700_000_005.0)
    # 2027-01-15
    angry = await talk(
        store, "angry-2", [("my router is broken", "Have you tried turning it off?")], start=1_800_000_000.0
    )
    await rate(store, "angry-2", angry[1]["seq"], "up", at=1_800_000_005.0)
    # the vote changed: down counts
    await rate(store, "angry-2", angry[1]["seq"], "down", comment="useless", at=1_800_000_006.0)
    await talk(store, "handed-3", [("a person please", "Passing you to a colleague.")], start=1_800_000_100.0)
    await store.append(
        "handed-3", {"type": "handoff", "timestamp": 1_800_000_102.0, "by": "rule", "reason": "asked for a person"}
    )
    return store


async def _senders(client, query: str = "") -> list[str]:
    response = await client.get("/api/admin/conversations" + query, headers=ADMIN)
    assert response.status == 200, await response.text()
    return [c["sender"] for c in (await response.json())["conversations"]]


async def test_conversations_are_found_by_rating_handoff_words_and_date(project, serve):
    client, _ = await serve(project)
    await _stored(client)
    assert await _senders(client) == ["handed-3", "angry-2", "happy-1"]  # most recently active first
    assert await _senders(client, "?rated=down") == ["angry-2"]
    assert await _senders(client, "?rated=up") == ["happy-1"]
    assert await _senders(client, "?handed_off=true") == ["handed-3"]
    assert await _senders(client, "?q=ROUTER") == ["angry-2"]
    assert await _senders(client, "?since=2027-01-01") == ["handed-3", "angry-2"]
    assert await _senders(client, "?since=2027-01-01&rated=down&handed_off=false") == ["angry-2"]
    assert await _senders(client, "?limit=1") == ["handed-3"]

    rows = (await (await client.get("/api/admin/conversations?rated=down", headers=ADMIN)).json())["conversations"]
    assert rows[0]["ratings"] == {"up": 0, "down": 1} and rows[0]["handed_off"] is False
    assert rows[0]["last_customer_message"] == "my router is broken" and rows[0]["events"] == 4


@pytest.mark.parametrize(
    "query, named",
    [
        ("?rated=sideways", "rated"),
        ("?since=27/11/2026", "since"),
        ("?limit=0", "limit"),
        ("?limit=many", "limit"),
        ("?limit=501", "limit"),
        ("?handed_off=maybe", "handed_off"),
        ("?rated=", "rated"),
        ("?since=", "since"),
        ("?handed_off=", "handed_off"),
        ("?rating=down", "rating"),
    ],
)
async def test_a_wrong_filter_is_a_400_naming_it(project, serve, query, named):
    client, _ = await serve(project)
    response = await client.get("/api/admin/conversations" + query, headers=ADMIN)
    assert response.status == 400 and f"'{named}'" in (await response.json())["error"]


async def test_the_timeline_is_every_stored_event(project, serve):
    client, _ = await serve(project)
    await _stored(client)
    body = await (await client.get("/api/admin/conversations/angry-2", headers=ADMIN)).json()
    assert body["sender"] == "angry-2"
    assert [e["type"] for e in body["events"]] == ["user", "bot", "rating", "rating"]
    assert body["events"][-1]["comment"] == "useless" and body["events"][-1]["rated_seq"] == body["events"][1]["seq"]
    missing = await client.get("/api/admin/conversations/nobody", headers=ADMIN)
    assert missing.status == 404 and "nobody" in (await missing.json())["error"]
    assert (await client.get("/api/admin/conversations/bad%20id", headers=ADMIN)).status == 400


@pytest.mark.parametrize("method, path", CONSOLE_ROUTES)
async def test_every_console_route_needs_the_admin_token(project, serve, method, path):
    client, _ = await serve(project)
    assert (await client.request(method, path)).status == 401
    assert (await client.request(method, path, headers={"Authorization": "Bearer wrong"})).status == 401
    closed, _ = await serve(project, admin_token="")
    assert (await closed.request(method, path, headers={"Authorization": "Bearer anything"})).status == 403


async def test_models_list_their_gate_and_figures_and_activating_swaps_the_served_model(project, serve, tokenizer):
    settings = settings_of(project)
    add_model(settings, "20261127-100000")
    add_model(settings, "20261127-110000", report=False, activated=False)
    models.activate(settings.models_dir, "20261127-100000")
    client, _ = await serve(project, loader=active_model_loader(settings, tokenizer))
    assert (await (await client.get("/health")).json())["model"]["id"] == "20261127-100000"

    listed = (await (await client.get("/api/models", headers=ADMIN)).json())["models"]
    assert [(m["id"], m["active"], m["previous"], m["report"]) for m in listed] == [
        ("20261127-100000", True, False, True),
        ("20261127-110000", False, False, False),
    ]
    assert listed[0]["metrics"] == SUMMARY and listed[1]["metrics"] is None
    assert listed[0]["gate"]["activated"] is True and listed[1]["gate"]["activated"] is False
    assert "12 steps" in listed[0]["description"]

    report = await client.get("/api/models/20261127-100000/report", headers=ADMIN)
    assert report.status == 200 and (await report.json())["summary"]["fine-tuned"]["chrf"] == 0.61
    no_report = await client.get("/api/models/20261127-110000/report", headers=ADMIN)
    assert no_report.status == 404 and "bot eval" in (await no_report.json())["error"]

    response = await client.post("/api/models/20261127-110000/activate", headers=ADMIN)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["model"]["id"] == "20261127-110000" and body["previous"]["id"] == "20261127-100000"
    assert (await (await client.get("/health")).json())["model"]["id"] == "20261127-110000"
    answer = await client.post("/webhooks/rest/webhook", json={"sender": "c1", "message": "hi"})
    assert (await answer.json())[0]["text"] == "answer from 20261127-110000"
    assert models.active_id(settings.models_dir) == "20261127-110000"

    listed = (await (await client.get("/api/models", headers=ADMIN)).json())["models"]
    assert [(m["id"], m["active"], m["previous"]) for m in listed] == [
        ("20261127-100000", False, True),
        ("20261127-110000", True, False),
    ]
    rolled_back = await (await client.post("/api/models/20261127-100000/activate", headers=ADMIN)).json()
    assert rolled_back["model"]["id"] == "20261127-100000"
    assert (await (await client.get("/health")).json())["model"]["id"] == "20261127-100000"


async def test_unknown_models_are_404_and_a_model_that_fails_to_load_leaves_the_active_one(project, serve, tokenizer):
    settings = settings_of(project)
    add_model(settings, "good")
    add_model(settings, "broken")
    models.activate(settings.models_dir, "good")
    serving = active_model_loader(settings, tokenizer)

    def loader():
        if models.active_id(settings.models_dir) == "broken":
            raise models.UnknownModel("model 'broken' has no adapter folder")
        return serving()

    client, _ = await serve(project, loader=loader)
    for path in ("/api/models/nope/report", "/api/models/nope/activate"):
        response = await client.request("POST" if path.endswith("activate") else "GET", path, headers=ADMIN)
        assert response.status == 404 and "no trained model 'nope'" in (await response.json())["error"]
    assert (await client.post("/api/models/..%2Fx/activate", headers=ADMIN)).status in (400, 404)

    failed = await client.post("/api/models/broken/activate", headers=ADMIN)
    assert failed.status == 400 and "no adapter folder" in (await failed.json())["error"]
    assert models.active_id(settings.models_dir) == "good" and models.previous_id(settings.models_dir) is None
    assert (await (await client.get("/health")).json())["model"]["id"] == "good"


async def test_no_models_yet_is_an_empty_list(project, serve):
    client, _ = await serve(project)
    assert await (await client.get("/api/models", headers=ADMIN)).json() == {"models": []}


def test_activating_remembers_the_model_it_replaces(tmp_path):
    for model_id in ("a", "b"):
        (tmp_path / model_id).mkdir()
        models.write_json(tmp_path / model_id / models.MANIFEST, {"id": model_id})
    models.activate(tmp_path, "a")
    assert models.previous_id(tmp_path) is None
    models.activate(tmp_path, "b")
    models.activate(tmp_path, "b")  # activating the active one again changes nothing
    assert (models.active_id(tmp_path), models.previous_id(tmp_path)) == ("b", "a")


async def test_the_console_page_and_its_files_are_served_under_the_page_policy(project, serve):
    client, _ = await serve(project)
    page = await client.get("/console")
    assert page.status == 200 and page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy  # an admin page: never in another site's frame
    # the demo page's is unchanged
    assert "frame-ancestors 'self'" in (await client.get("/")).headers["Content-Security-Policy"]
    html = await page.text()
    assert '<script type="module" src="/console/main.js">' in html and "<style" not in html and " style=" not in html
    script = await client.get("/console/main.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert (await client.get("/console/console.css")).content_type == "text/css"
    for name in ("index.html", "..%2Fwidget.js", "nothing.js"):
        assert (await client.get(f"/console/{name}")).status == 404
