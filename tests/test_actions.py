"""Actions through a real rasa-sdk action server, faults of the action server, actions the model
must not run, and the handoff flow with the agent API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from serve_support import ADMIN, chat, make_project, sse_events, stored_events

from bot.policy.reply import COULD_NOT_DO
from bot.runtime.action_runner import SORRY

ROOT = Path(__file__).resolve().parent.parent

STARTER_ACTIONS = (ROOT / "training_data" / "actions.yml").read_text()


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def action_server():
    """`python -m rasa_sdk --actions actions` with the example actions, on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rasa_sdk", "--actions", "actions", "--port", str(port)],
        cwd=ROOT,
        env=dict(os.environ, SANIC_HOST="127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if json.load(response) == {"status": "ok"}:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the action server did not start:\n" + process.stdout.read().decode(errors="replace"))
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


def starter_project(tmp_path, cache_dir, endpoints: str, config: str = ""):
    """A project with the starter persona's actions (those the example action server has)."""
    project = make_project(tmp_path / "p", cache_dir, endpoints=endpoints, config=config)
    (project / "training_data" / "actions.yml").write_text(STARTER_ACTIONS)
    return project


async def test_actions_run_on_the_real_action_server(tmp_path, cache_dir, serve, action_server, tokenizer):
    project = starter_project(tmp_path, cache_dir, f"action_endpoint:\n  url: {action_server}/webhook\n")
    replies = [
        call("verify_customer", account_id="40912267", postcode="M14 5RT"),
        call("get_bill", account_id="40912267"),
        "Thanks, Callum. Your October bill is £22: £15 for your plan and £7 for calls to 0845 numbers.",
        call("list_plans", kind="mobile"),
        "Here are our mobile plans; tap one to choose it.",
    ]
    client, model = await serve(project, replies)
    events = await chat(client, "c1", "Why is my bill £22? Account 40912267, postcode M14 5RT.")
    messages = [data for name, data in events if name == "message"]
    assert [m["text"] for m in messages] == [replies[2]]
    assert not any("tool_call" in data.get("text", "") for name, data in events if name == "token")

    log = await stored_events(client, "c1")
    assert [e["type"] for e in log] == ["user", "action", "slot", "action", "bot"]
    verify, slot, bill = log[1], log[2], log[3]
    assert verify["name"] == "verify_customer" and verify["result"] == {"verified": True, "first_name": "Callum"}
    assert (slot["name"], slot["value"]) == ("verified_account", "40912267")
    # get_bill only answers for a verified account: the slot set by the first action was sent with the second call
    assert bill["result"]["total"] == 22.0 and bill["result"]["month"] == "2026-10"
    # the model wrote its reply with the action's result in its context, rendered as in training
    last_prompt = tokenizer.decode(model.engine.prompts[2])
    assert '"total": 22.0' in last_prompt and last_prompt.count("<tool_call>") >= 2

    # A later message: the slot is still there; an action's responses (quick replies) are shown.
    events = await chat(client, "c1", "What plans do you have?")
    messages = [data for name, data in events if name == "message"]
    assert messages[0]["buttons"][0] == {
        "title": "Essentials 5GB (£10)",
        "payload": "I'd like the Essentials 5GB plan",
    }
    assert messages[1]["text"] == replies[4]
    rest = await client.post("/webhooks/rest/webhook", json={"sender": "c2", "message": "hi"})
    assert rest.status == 200


async def test_an_action_can_hand_the_conversation_over(tmp_path, cache_dir, serve, action_server):
    project = starter_project(tmp_path, cache_dir, f"action_endpoint:\n  url: {action_server}/webhook\n")
    replies = [
        call("verify_customer", account_id="51234567", postcode="TR1 2HE"),
        call("book_engineer", account_id="51234567", date="2026-12-02"),
    ]
    client, _ = await serve(project, replies)
    events = await chat(client, "c3", "Book an engineer please, account 51234567, TR1 2HE")
    assert [data["type"] for name, data in events if name == "message"] == ["handoff"]
    log = await stored_events(client, "c3")
    assert log[-1]["type"] == "handoff" and log[-1]["by"] == "action" and "book_engineer" in log[-1]["reason"]


def fake_action_server(statuses: list[int], seen: list[dict], delay: float = 0.0):
    async def webhook(request):
        seen.append(await request.json())
        await asyncio.sleep(delay)
        status = statuses[min(len(seen), len(statuses)) - 1]
        if status == 200:
            return web.json_response({"events": [], "responses": [{"custom": {"status": "shipped"}, "text": None}]})
        errors = {
            400: {"error": "Invalid body request"},
            404: {"error": "No registered action found for name 'check_order'."},
            449: {"error": "No domain found"},
            500: {"error": "boom", "request_body": {}},
        }
        return web.json_response(errors[status], status=status)

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    return TestServer(app)


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_error_statuses_get_an_apology_and_a_log_line(tmp_path, cache_dir, serve, caplog, status):
    seen = []
    server = fake_action_server([status], seen)
    await server.start_server()
    project = make_project(
        tmp_path / "p", cache_dir, endpoints=f"action_endpoint:\n  url: {server.make_url('/webhook')}\n"
    )
    client, model = await serve(project, [call("check_order", order_id="ES-1001")])
    with caplog.at_level(logging.WARNING, logger="bot.runtime.action_runner"):
        events = await chat(client, "f1", "where is ES-1001?")
    await server.close()
    assert [data["text"] for name, data in events if name == "message"] == [SORRY]
    failed = [e for e in await stored_events(client, "f1") if e["type"] == "action_failed"]
    assert failed[0]["name"] == "check_order" and failed[0]["status"] == f"HTTP {status}"
    assert f"action check_order failed for conversation f1: HTTP {status}" in caplog.text
    assert len(model.engine.prompts) == 1  # no follow-up generated from a failed action


async def test_449_is_answered_by_resending_with_the_domain(tmp_path, cache_dir, serve):
    seen = []
    server = fake_action_server([449, 200], seen)
    await server.start_server()
    project = make_project(
        tmp_path / "p", cache_dir, endpoints=f"action_endpoint:\n  url: {server.make_url('/webhook')}\n"
    )
    client, _ = await serve(project, [call("check_order", order_id="ES-1001"), "It has shipped."])
    events = await chat(client, "f2", "where is ES-1001?")
    await server.close()
    assert [data["text"] for name, data in events if name == "message"] == ["It has shipped."]
    assert len(seen) == 2 and "check_order" in seen[1]["domain"]["actions"]
    body = seen[0]
    assert body["next_action"] == "check_order" and body["sender_id"] == "f2" and body["version"]
    assert body["tracker"]["slots"]["order_id"] == "ES-1001"
    assert body["tracker"]["latest_message"]["entities"][0] == {
        "entity": "order_id",
        "value": "ES-1001",
        "extractor": "bot",
    }
    assert body["tracker"]["events"][-1]["event"] == "user"


async def test_unreachable_and_slow_action_servers(tmp_path, cache_dir, serve):
    project = make_project(tmp_path / "p", cache_dir)  # nothing listens at the action endpoint
    client, _ = await serve(project, [call("check_order", order_id="ES-1001")])
    started = time.monotonic()
    events = await chat(client, "f3", "order ES-1001?")
    assert [data["text"] for name, data in events if name == "message"] == [SORRY] and time.monotonic() - started < 5
    assert [e for e in await stored_events(client, "f3") if e["type"] == "action_failed"][0]["status"] == "unreachable"

    seen = []
    server = fake_action_server([200], seen, delay=3)
    await server.start_server()
    endpoints = f"action_endpoint:\n  url: {server.make_url('/webhook')}\n  timeout_s: 0.5\n"
    slow = make_project(tmp_path / "slow", cache_dir, endpoints=endpoints)
    client, _ = await serve(slow, [call("check_order", order_id="ES-1001")])
    started = time.monotonic()
    events = await chat(client, "f4", "order ES-1001?")
    assert time.monotonic() - started < 2.5
    assert [data["text"] for name, data in events if name == "message"] == [SORRY]
    assert [e for e in await stored_events(client, "f4") if e["type"] == "action_failed"][0]["status"] == "timeout"
    await server.close()


@pytest.mark.parametrize(
    "reply, problem",
    [
        (call("delete_account", account_id="1"), "'delete_account' is not a declared action"),
        (call("check_order", order_id="ES-1", drop_table="x"), "unknown argument 'drop_table'"),
        (call("check_order"), "missing argument 'order_id'"),
        (call("check_order", order_id=1001), "argument 'order_id' must be string"),
    ],
)
async def test_undeclared_actions_and_arguments_never_run(tmp_path, cache_dir, serve, reply, problem):
    seen = []
    server = fake_action_server([200], seen)
    await server.start_server()
    project = make_project(
        tmp_path / "p", cache_dir, endpoints=f"action_endpoint:\n  url: {server.make_url('/webhook')}\n"
    )
    client, _ = await serve(project, [reply])
    events = await chat(client, "u1", "do it")
    await server.close()
    assert seen == []  # never sent to the action server
    assert [data["text"] for name, data in events if name == "message"] == [COULD_NOT_DO]
    rejected = [e for e in await stored_events(client, "u1") if e["type"] == "action_rejected"]
    assert problem in rejected[0]["problems"]


async def test_at_most_the_configured_actions_per_message(tmp_path, cache_dir, serve):
    seen = []
    server = fake_action_server([200], seen)
    await server.start_server()
    endpoints = f"action_endpoint:\n  url: {server.make_url('/webhook')}\n"
    project = make_project(
        tmp_path / "p", cache_dir, endpoints=endpoints, config="serve:\n  max_actions_per_message: 2\n"
    )
    orders = iter(["ES-1001", "ES-1002", "ES-1003", "ES-1004"])
    client, model = await serve(project, lambda prompt: call("check_order", order_id=next(orders)))  # calls forever
    events = await chat(client, "u2", "loop on ES-1001, ES-1002, ES-1003 and ES-1004")
    await server.close()
    assert [s["next_action"] for s in seen] == ["check_order"] * 2
    # After the second action the model writes text: a constrained engine can't open a call
    # there; this scripted one calls anyway, and that call is refused.
    assert model.engine.text_only == [False, False, True]
    assert [data["text"] for name, data in events if name == "message"] == [COULD_NOT_DO]


async def test_a_repeated_call_is_not_run_again_and_the_model_answers_in_text(tmp_path, cache_dir, serve):
    seen = []
    server = fake_action_server([200], seen)
    await server.start_server()
    project = make_project(
        tmp_path / "p", cache_dir, endpoints=f"action_endpoint:\n  url: {server.make_url('/webhook')}\n"
    )
    looping = call("check_order", order_id="ES-1001")
    client, model = await serve(project, [looping, looping, "ES-1001 has shipped."])
    events = await chat(client, "u3", "where is ES-1001?")
    await server.close()
    assert [s["next_action"] for s in seen] == ["check_order"]  # run once, not twice
    assert model.engine.text_only == [False, False, True]  # the repeat is answered in text
    assert [data["text"] for name, data in events if name == "message"] == ["ES-1001 has shipped."]


async def test_handoff_webhook_agent_reply_and_resume(tmp_path, cache_dir, serve):
    notified = []

    async def hook(request):
        notified.append(await request.json())
        return web.json_response({"ok": True})

    hook_app = web.Application()
    hook_app.router.add_post("/handoff", hook)
    hook_server = TestServer(hook_app)
    await hook_server.start_server()
    endpoints = (
        f"action_endpoint:\n  url: http://127.0.0.1:9/webhook\n"
        f"handoff_webhook:\n  url: {hook_server.make_url('/handoff')}\n"
    )
    project = make_project(tmp_path / "p", cache_dir, endpoints=endpoints)
    replies = [
        "I can't decide refunds myself, but a colleague can. Shall I pass you over if you need one?",
        call("handoff_to_human", reason="customer wants a refund decision"),
        "Welcome back! Anything else?",
    ]
    client, model = await serve(project, replies)

    await chat(client, "h1", "hello")
    # the model decides (a request for a person is the rule's)
    events = await chat(client, "h1", "I want a refund for this")
    handoff = [data for name, data in events if name == "message"]
    assert handoff == [
        {
            "recipient_id": "h1",
            "text": "I'm passing you to a colleague, who will reply here shortly.",
            "type": "handoff",
            "seq": handoff[0]["seq"],
        }
    ]
    assert notified[0]["sender"] == "h1" and notified[0]["reason"] == "customer wants a refund decision"
    assert "customer: I want a refund for this" in notified[0]["summary"]

    assert (await client.get("/api/handoffs")).status == 401  # agents need the admin token
    assert (await client.get("/api/handoffs", headers={"Authorization": "Bearer wrong"})).status == 401
    waiting = await (await client.get("/api/handoffs", headers=ADMIN)).json()
    assert [w["sender"] for w in waiting["waiting"]] == ["h1"]
    assert waiting["waiting"][0]["reason"] == "customer wants a refund decision"

    # While a person has it, the bot stays quiet: the message is stored, the model is not asked.
    prompts = len(model.engine.prompts)
    events = await chat(client, "h1", "hello? anyone?")
    assert ("waiting", {"reason": "customer wants a refund decision"}) in events
    assert len(model.engine.prompts) == prompts

    feed = await client.get("/api/conversations/h1/events", headers={"Last-Event-ID": str(events[0][1]["seq"])})
    sent = await client.post(
        "/api/conversations/h1/messages",
        json={"text": "Hi, I'm Alex from the refunds team.", "agent": "Alex"},
        headers=ADMIN,
    )
    assert sent.status == 200 and (await sent.json())["took_over"] is False
    received = b""
    while b"refunds team" not in received:
        received += await asyncio.wait_for(feed.content.readany(), 5)
    assert sse_events(received.decode())[-1][1] | {"seq": 0, "timestamp": 0} == {
        "seq": 0,
        "timestamp": 0,
        "type": "agent",
        "text": "Hi, I'm Alex from the refunds team.",
        "agent": "Alex",
    }
    feed.close()

    assert (await client.post("/api/conversations/h1/resume", headers=ADMIN)).status == 200
    assert (await client.post("/api/conversations/h1/resume", headers=ADMIN)).status == 409
    assert (await (await client.get("/api/handoffs", headers=ADMIN)).json())["waiting"] == []
    events = await chat(client, "h1", "thanks, one more thing")
    assert [data["text"] for name, data in events if name == "message"] == ["Welcome back! Anything else?"]
    history = [e["type"] for e in (await (await client.get("/api/conversations/h1")).json())["events"]]
    assert history == ["user", "bot", "user", "handoff", "user", "agent", "resume", "user", "bot"]
    # the agent's message is part of the model's context when the bot takes over again
    assert "Hi, I'm Alex from the refunds team." in model.tokenizer.decode(model.engine.prompts[-1])
    await hook_server.close()


async def test_an_agent_can_take_over_a_bot_conversation(tmp_path, cache_dir, serve):
    project = make_project(tmp_path / "p", cache_dir)
    client, _ = await serve(project, ["Hello!"])
    await chat(client, "t1", "hi")
    sent = await client.post(
        "/api/conversations/t1/messages", json={"text": "Hi, Sam here from the team."}, headers=ADMIN
    )
    assert (await sent.json())["took_over"] is True
    log = await stored_events(client, "t1")
    assert [e["type"] for e in log] == ["user", "bot", "handoff", "agent"] and log[2]["by"] == "agent"
    bad = await client.post("/api/conversations/t1/messages", json={"txt": "typo"}, headers=ADMIN)
    assert bad.status == 400 and "text: Field required" in (await bad.json())["error"]


async def test_a_failing_handoff_webhook_does_not_break_the_handoff(tmp_path, cache_dir, serve, caplog):
    endpoints = (
        "action_endpoint:\n  url: http://127.0.0.1:9/webhook\nhandoff_webhook:\n  url: http://127.0.0.1:9/hook\n"
    )
    project = make_project(tmp_path / "p", cache_dir, endpoints=endpoints)
    client, _ = await serve(project, [call("handoff_to_human", reason="asked")])
    with caplog.at_level(logging.WARNING, logger="bot.runtime.handoff_webhook"):
        events = await chat(client, "w1", "a person please")
    assert [data["type"] for name, data in events if name == "message"] == ["handoff"]
    assert "handoff webhook http://127.0.0.1:9/hook failed for conversation w1" in caplog.text


def test_example_actions_are_exactly_the_declared_ones(monkeypatch):
    import yaml
    from rasa_sdk.executor import ActionExecutor

    monkeypatch.syspath_prepend(str(ROOT))
    executor = ActionExecutor()
    executor.register_package("actions")
    assert sorted(executor.actions) == sorted(yaml.safe_load(STARTER_ACTIONS)["actions"])


async def test_serve_with_actions_starts_the_action_server_and_stops_it(tmp_path, cache_dir, tokenizer):
    """`bot serve --actions actions`: the action server is up before the first request and gone
    when the bot stops."""
    import shutil

    from aiohttp.test_utils import TestClient
    from serve_support import scripted_model, settings_of

    from bot.runtime.action_server import ActionServerError, action_server
    from bot.serve.app import create_app

    port = free_port()
    project = starter_project(tmp_path, cache_dir, f"action_endpoint:\n  url: http://127.0.0.1:{port}/webhook\n")
    shutil.copytree(ROOT / "actions", project / "actions")
    settings = settings_of(project)
    model = scripted_model(
        settings, tokenizer, [call("check_order", order_id="KM-104233"), "It's out for delivery today."]
    )
    client = TestClient(TestServer(create_app(settings, load_model=lambda: model, action_package="actions")))
    await client.start_server()
    try:
        events = await chat(client, "m1", "where is KM-104233?")
        assert [data["text"] for name, data in events if name == "message"] == ["It's out for delivery today."]
        action = next(e for e in await stored_events(client, "m1") if e["type"] == "action")
        assert action["result"]["status"] == "out_for_delivery"
    finally:
        await client.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)

    with pytest.raises(ActionServerError, match="exited with code"):
        async with action_server("no_such_package", f"http://127.0.0.1:{port}/webhook", project):
            pass
    with pytest.raises(ActionServerError, match="starts a local action server"):
        async with action_server("actions", "http://actions.example:5055/webhook", project):
            pass
