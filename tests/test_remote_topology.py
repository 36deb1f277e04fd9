"""The scaled-out topology with real processes: one `bot serve` (the tiny model, in process) is
the model server, and two `bot serve --model-server URL` front-ends, which load no weights and
no torch, share one PostgreSQL store and the Redis lock (tracker_store.lock_url). 40
conversations alternate their messages between the front-ends; greedy replies through a
front-end equal the in-process engine's; the model server killed (SIGKILL) mid-reply gives the
customer the apology, and the front-end recovers once it is started again.

Process starts cost several seconds each here, so the processes are shared by the module."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from contextlib import aclosing
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from serve_support import NO_ACTION_SERVER, make_project, settings_of, sse_events
from server_process import ServerProcess
from store_isolation import REDIS_URL, postgres_schema, redis_prefix

from bot.conversations.events import MODEL_UNAVAILABLE
from bot.engine.protocol import Decoding, EngineError
from bot.engine.remote import RemoteEngine
from bot.policy.reply import COULD_NOT_DO, NOT_UNDERSTOOD
from bot.rendering import parse_reply

MAX_NEW_TOKENS = 24
# the model server asks for it; the front-ends send it
KEY_VARIABLE, KEY = (
    "BOT_MODEL_SERVER_KEY",
    "k3y-of-the-model-server",
)
KEY_SETTING = f"model_server:\n  api_key_env: {KEY_VARIABLE}\n"
CONVERSATIONS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BotServe(ServerProcess):
    """`python -m bot -C PROJECT serve --port PORT [ARGS]`: the real command line."""

    def __init__(self, project: Path, port: int, *args: str):
        super().__init__(project, port, env={KEY_VARIABLE: KEY})
        self.command = [sys.executable, "-m", "bot", "-C", str(project), "serve", "--port", str(port), *args]

    def _launch(self):
        """The output goes to a file (a long run would fill a pipe)."""
        import subprocess

        self.log = self.project / f"serve-{self.port}.log"
        return subprocess.Popen(
            self.command, cwd=self.project, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()[-3000:]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def has_torch(self) -> bool:
        """Whether torch is loaded in the process: its native library is then mapped."""
        return "libtorch" in Path(f"/proc/{self.process.pid}/maps").read_text()


def _config(max_new_tokens: int) -> str:
    return f"serve:\n  max_new_tokens: {max_new_tokens}\n  rate_per_conversation: 1000\n  rate_per_client: 100000\n"


def _entered_for_the_module(manager):
    """Enters an async context manager in an event loop of its own (a module's fixtures outlive
    each test's loop), yields what it gives, and leaves it afterwards."""
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete(manager.__aenter__())
        loop.run_until_complete(manager.__aexit__(None, None, None))
    finally:
        loop.close()


@pytest.fixture(scope="module")
def postgres_url():
    for url, _ in _entered_for_the_module(postgres_schema()):
        yield url


@pytest.fixture(scope="module")
def lock_prefix():
    """The key prefix of this module's conversation locks in Redis (its keys deleted afterwards)."""
    for _, prefix in _entered_for_the_module(redis_prefix()):
        yield prefix


FRONT_LOCK_TIMEOUT_S = 3  # a message waits this long for its conversation's lock, then gets 503


@pytest.fixture(scope="module")
def topology(tmp_path_factory, cache_dir, tiny_base, postgres_url, lock_prefix):
    """{'server': the model server, 'fronts': [two front-ends], 'model_project', 'front_project'}."""
    root = tmp_path_factory.mktemp("topology")
    model_project = make_project(root / "model", cache_dir, base=tiny_base, config=_config(MAX_NEW_TOKENS))
    server = BotServe(model_project, _free_port())
    store = (
        f"tracker_store:\n  type: postgresql\n  url: {postgres_url}\n  lock_url: {REDIS_URL}\n"
        f'  key_prefix: "{lock_prefix}"\n'
    )
    endpoints = NO_ACTION_SERVER + KEY_SETTING + store
    config = _config(MAX_NEW_TOKENS) + f"  lock_timeout_s: {FRONT_LOCK_TIMEOUT_S}\n"
    front_project = make_project(root / "front", cache_dir, base=tiny_base, config=config, endpoints=endpoints)
    fronts = [BotServe(front_project, _free_port(), "--model-server", server.url) for _ in range(2)]
    try:
        server.start()
        for front in fronts:
            front.start()
        yield {"server": server, "fronts": fronts, "model_project": model_project, "front_project": front_project}
    finally:
        for process in [*fronts, server]:
            process.stop()


async def _say(session: aiohttp.ClientSession, url: str, sender: str, text: str) -> list[tuple[str, dict]]:
    async with session.post(url + "/api/chat/stream", json={"sender": sender, "message": text}) as response:
        assert response.status == 200
        return sse_events(await response.text())


async def _stored(postgres_url: str, senders: list[str]) -> dict[str, list[dict]]:
    from bot.conversations.store_postgres import PostgresStore

    store = await PostgresStore.connect(postgres_url)
    try:
        return {sender: await store.events(sender) for sender in senders}
    finally:
        await store.close()


async def test_forty_conversations_alternate_between_two_front_ends(topology, postgres_url):
    fronts = topology["fronts"]
    for front in fronts:
        health = json.loads(_get(front.url + "/health"))
        assert health["status"] == "ok" and health["model"]["engine"] == "remote"
        assert health["model"]["model_server"] == topology["server"].url
        # the name the model server serves it under
        assert json.loads(_get(front.url + "/v1/models"))["data"][0]["root"] == "base"
    messages = ["Hi, my bill looks wrong.", "It is account 40118822.", "Thanks, bye."]
    senders = [f"topo-{n:02d}-{time.monotonic_ns() % 10**6}" for n in range(CONVERSATIONS)]

    async def conversation(session, n: int, sender: str) -> list[list[tuple[str, dict]]]:
        replies = []
        for m, text in enumerate(messages):
            # each message to the other front-end
            replies.append(await _say(session, fronts[(n + m) % 2].url, sender, text))
        return replies

    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(conversation(session, n, s) for n, s in enumerate(senders)))
    seconds = time.monotonic() - started
    for replies in results:
        for events in replies:
            names = [name for name, _ in events]
            assert "error" not in names and names[0] == "received" and names[-1] == "done", events
            assert [d["type"] for name, d in events if name == "message"] == ["bot"]
            assert [d["text"] for name, d in events if name == "message"] != [COULD_NOT_DO]
    stored = await _stored(postgres_url, senders)
    for sender in senders:
        kinds = [(e["type"], e.get("text")) for e in stored[sender]]
        assert [k for k in kinds if k[0] == "user"] == [("user", text) for text in messages]  # each once, in order
        assert [k[0] for k in kinds] == ["user", "bot"] * len(messages)
        assert [e["seq"] for e in stored[sender]] == sorted({e["seq"] for e in stored[sender]})
    server_mb, front_mb = topology["server"].rss_mb(), max(front.rss_mb() for front in fronts)
    print(
        f"\n{CONVERSATIONS * len(messages)} replies in {seconds:.1f} s; "
        f"RSS: model server {server_mb:.0f} MB, front-end {front_mb:.0f} MB"
    )
    assert topology["server"].has_torch() and not any(front.has_torch() for front in fronts)  # no weights, no torch
    assert front_mb < 0.5 * server_mb


async def test_the_front_ends_lock_conversations_in_redis(topology, lock_prefix, postgres_url):
    """The lock of a conversation held in Redis (as by another front-end writing its reply):
    a message to either front-end waits for it, then gets 503 and is not stored; once it is
    released, the message is answered."""
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    sender = f"locked-{time.monotonic_ns() % 10**9}"
    held = client.lock(f"{lock_prefix}lock:{sender}", timeout=60)
    assert await held.acquire(blocking=False)
    try:
        async with aiohttp.ClientSession() as session:
            for front in topology["fronts"]:
                async with session.post(
                    front.url + "/webhooks/rest/webhook", json={"sender": sender, "message": "Hi"}
                ) as response:
                    assert response.status == 503
            assert (await _stored(postgres_url, [sender]))[sender] == []
            await held.release()
            async with session.post(
                topology["fronts"][1].url + "/webhooks/rest/webhook", json={"sender": sender, "message": "Hi"}
            ) as response:
                assert response.status == 200 and [m["text"] for m in await response.json()] != [COULD_NOT_DO]
    finally:
        if await held.owned():
            await held.release()
        await client.aclose()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def test_greedy_replies_through_a_front_end_equal_the_in_process_engine(topology, postgres_url):
    from bot.engine.protocol import Finished
    from bot.engine.response_model import load_response_model
    from bot.policy.context import to_messages

    fronts, sender = topology["fronts"], f"greedy-{time.monotonic_ns() % 10**9}"
    async with aiohttp.ClientSession() as session:
        for n, text in enumerate(["Hello, can you help me with roaming?", "I am going to France next week."]):
            await _say(session, fronts[n % 2].url, sender, text)
    events = (await _stored(postgres_url, [sender]))[sender]
    assert [e["type"] for e in events] == ["user", "bot", "user", "bot"]
    # the model server's own model, in this process
    local = load_response_model(settings_of(topology["model_project"]))
    try:
        for at in (1, 3):
            messages = to_messages(events[:at], local.profile.system_prompt)
            async with aclosing(local.stream(messages, MAX_NEW_TOKENS)) as items:
                finished = [item async for item in items if isinstance(item, Finished)][0]
            assert events[at]["text"] == (parse_reply(finished.text).text or NOT_UNDERSTOOD)
    finally:
        await local.close()


async def test_the_model_server_killed_mid_reply_then_restarted(topology, tmp_path, cache_dir, caplog, monkeypatch):
    """A front-end in this process (the real app, 200-token replies, so there is time to kill the
    model server mid-reply) on the module's model server, which is killed and started again."""
    from bot.engine.response_model import remote_response_model
    from bot.serve.app import create_app
    from bot.serve.keys import STORE

    server = topology["server"]
    endpoints = (
        NO_ACTION_SERVER + f"model_server:\n  url: {server.url}\n  timeout_s: 5\n  api_key_env: {KEY_VARIABLE}\n"
    )
    settings = settings_of(
        make_project(
            tmp_path / "front", cache_dir, base=_tiny_base_of(topology), config=_config(200), endpoints=endpoints
        )
    )
    monkeypatch.setenv(KEY_VARIABLE, "not-the-key")
    client = TestClient(TestServer(create_app(settings, load_model=lambda: remote_response_model(settings))))
    await client.start_server()
    try:  # a wrong key: the model server says 401, the customer gets the apology
        response = await client.post("/webhooks/rest/webhook", json={"sender": "wrong-key", "message": "Hi"})
        assert [m["text"] for m in await response.json()] == [COULD_NOT_DO]
        assert "answered HTTP 401" in (await (await client.get("/health")).json())["reason"]
    finally:
        await client.close()
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    client = TestClient(TestServer(create_app(settings, load_model=lambda: remote_response_model(settings))))
    await client.start_server()
    try:
        response = await client.post(
            "/api/chat/stream", json={"sender": "killed", "message": "Tell me about my plan."}
        )
        seen = b""
        while b"event: token" not in seen:  # the reply is being written
            seen += await response.content.readline()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        events = sse_events(seen.decode() + (await response.text()))
        assert [d["text"] for name, d in events if name == "message"] == [COULD_NOT_DO]
        assert "error" not in [name for name, _ in events]
        stored = await client.server.app[STORE].events("killed")
        assert [e["type"] for e in stored] == ["user", MODEL_UNAVAILABLE, "bot"]
        assert stored[0]["text"] == "Tell me about my plan." and "broke off the reply" in stored[1]["error"]
        health = await (await client.get("/health")).json()
        assert health["status"] == "degraded" and "can't be reached" in health["reason"]
        assert not [r for r in caplog.records if r.levelno >= 40] and "Traceback" not in caplog.text

        server.start()  # the same command, the same port
        assert (await (await client.get("/health")).json())["status"] == "ok"
        response = await client.post("/webhooks/rest/webhook", json={"sender": "killed", "message": "Hello again."})
        assert response.status == 200 and [m["text"] for m in await response.json()] != [COULD_NOT_DO]
        for front in topology["fronts"]:  # the other front-ends recover by themselves too
            async with aiohttp.ClientSession() as session:
                events = await _say(session, front.url, f"after-{front.port}", "Hi")
            assert [d["text"] for name, d in events if name == "message"] != [COULD_NOT_DO]
            log = front.log.read_text()
            assert "Traceback" not in log and " ERROR " not in log, log[-2000:]
    finally:
        await client.close()


def _tiny_base_of(topology) -> str:
    import yaml

    return yaml.safe_load((topology["model_project"] / "config.yml").read_text())["model"]["base"]


def test_a_front_end_whose_lock_server_is_down_stops_with_one_clear_line(tmp_path, cache_dir, tiny_base):
    import subprocess

    endpoints = NO_ACTION_SERVER + "tracker_store:\n  lock_url: redis://127.0.0.1:1/0\n"  # nothing listens on port 1
    project = make_project(tmp_path / "front", cache_dir, base=tiny_base, endpoints=endpoints)
    command = [
        sys.executable,
        "-m",
        "bot",
        "-C",
        str(project),
        "serve",
        "--port",
        str(_free_port()),
        "--model-server",
        "http://127.0.0.1:9",
    ]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error: can't reach the Redis lock server at redis://127.0.0.1:1/0 (tracker_store.lock_url)" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


async def test_a_remote_engine_refuses_to_force_a_tool_call():
    engine = RemoteEngine("http://127.0.0.1:9", "base")  # nothing listens: the refusal comes before any request
    with pytest.raises(EngineError, match="can't force a tool call"):
        async with aclosing(engine.stream([1, 2], 4, Decoding(tool_call=True))) as pieces:
            await anext(pieces)
