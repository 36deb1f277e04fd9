"""Security headers on every response, CORS on streamed replies, allowed origins checked when
the settings load, and wrong admin tokens slowed per client address."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser

import aiohttp
import pytest
from serve_support import ADMIN_TOKEN, NO_ACTION_SERVER, make_project, settings_of

from bot.errors import InvalidFiles
from bot.serve.throttle import FailureThrottle

SHOP = "https://shop.example"


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(
        tmp_path / "bot",
        cache_dir,
        endpoints=NO_ACTION_SERVER + f"cors:\n  allow_origins: [{SHOP}, 'http://127.0.0.1:8080']\n",
    )


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        assert name not in parsed, f"{name} twice in {policy}"
        parsed[name] = sources
    return parsed


class InlineFinder(HTMLParser):
    """Everything in a page that a CSP without 'unsafe-inline' would block."""

    def __init__(self):
        super().__init__()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        self.inline += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script" and "src" not in names:
            self.inline.append("<script> without src")
        if any(value and value.strip().lower().startswith("javascript:") for value in names.values()):
            self.inline.append(f"{tag} javascript: URL")


async def test_the_demo_page_gets_a_policy_with_nothing_inline_and_framing_by_allowed_origins(project, serve):
    client, _ = await serve(project)
    page = await client.get("/")
    policy = directives(page.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == ["'self'"]
    assert policy["base-uri"] == policy["form-action"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'self'", SHOP, "http://127.0.0.1:8080"]
    assert not any("unsafe" in source for sources in policy.values() for source in sources)

    finder = InlineFinder()
    finder.feed(await page.text())
    assert finder.inline == []
    for path, kind in (("/demo.js", "javascript"), ("/demo.css", "text/css"), ("/widget.js", "javascript")):
        response = await client.get(path)
        assert response.status == 200 and kind in response.headers["Content-Type"], path
    assert "BotWidget.init(" in await (await client.get("/demo.js")).text()


async def test_a_not_modified_answer_leaves_the_pages_own_policy_alone(project, serve):
    client, _ = await serve(project)
    first = await client.get("/")
    again = await client.get("/", headers={"If-None-Match": first.headers["Etag"]})
    # The browser merges a 304's headers into its copy: a non-page policy here would block the page's scripts.
    assert again.status == 304 and "Content-Security-Policy" not in again.headers


async def test_every_response_says_nosniff_and_no_referrer(project, serve):
    client, _ = await serve(project, ["Hello there."])
    responses = [
        await client.get("/"),
        await client.get("/widget.js"),
        await client.get("/health"),
        await client.get("/metrics"),
        await client.get("/no/such/route"),
        await client.post("/api/chat/stream", data="{not json"),
        await client.post("/api/chat/stream", json={"sender": "h1", "message": "hi"}),  # streamed: headers sent early
    ]
    assert [r.status for r in responses] == [200, 200, 200, 200, 404, 400, 200]
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
        assert response.headers["Referrer-Policy"] == "no-referrer", response.url
    for response in responses[1:]:  # not pages: may load nothing, be framed by no one
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", (
            response.url
        )
    assert "Hello there." in await responses[-1].text()


async def test_a_streamed_reply_carries_cors_for_an_allowed_origin_only(project, serve):
    client, _ = await serve(project, ["One.", "Two."])
    allowed = await client.post("/api/chat/stream", json={"sender": "c1", "message": "hi"}, headers={"Origin": SHOP})
    assert allowed.headers["Content-Type"] == "text/event-stream"
    assert allowed.headers["Access-Control-Allow-Origin"] == SHOP and allowed.headers["Vary"] == "Origin"
    await allowed.read()
    refused = await client.post(
        "/api/chat/stream", json={"sender": "c2", "message": "hi"}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    await refused.read()


@pytest.mark.parametrize(
    "origin",
    ["https://shop.example/", "https://shop.example/path", "shop.example", "https://a.example; script-src *", "*"],
)
def test_an_allowed_origin_must_be_an_origin(tmp_path, cache_dir, origin):
    project = make_project(tmp_path / "o", cache_dir, endpoints=f'cors:\n  allow_origins: ["{origin}"]\n')
    with pytest.raises(InvalidFiles) as error:
        settings_of(project)
    assert "endpoints.yml:2:" in str(error.value) and "is not a web origin" in str(error.value)


def test_the_wait_doubles_after_the_allowed_failures_and_is_capped():
    now = [0.0]
    throttle = FailureThrottle(3, 60, clock=lambda: now[0])
    assert [throttle.failed("a") for _ in range(2)] == [0, 0]
    assert throttle.wait("a") == 0
    assert throttle.failed("a") == 1  # the third
    assert throttle.wait("a") == 1 and throttle.wait("b") == 0
    now[0] += 1
    assert [throttle.failed("a") for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert throttle.wait("a") == 60
    throttle.succeeded("a")
    assert throttle.wait("a") == 0 and throttle.count("a") == 0


def test_failures_are_forgotten_after_the_longest_wait_and_memory_is_bounded():
    now = [0.0]
    throttle = FailureThrottle(1, 30, max_keys=100, clock=lambda: now[0])
    throttle.failed("old")
    now[0] += 31
    assert throttle.wait("old") == 0 and len(throttle) == 0  # forgotten
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert throttle.count("10.0.3.231") == 1 and throttle.count("10.0.0.0") == 0  # the newest kept, the oldest gone


async def test_wrong_admin_tokens_from_one_address_are_slowed_and_others_are_not(tmp_path, cache_dir, serve):
    project = make_project(tmp_path / "a", cache_dir, config="serve:\n  admin_failures_allowed: 3\n")
    client, _ = await serve(project)
    wrong, right = {"Authorization": "Bearer guess"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    assert (await client.get("/api/handoffs", headers=right)).status == 200
    statuses = [(await client.get("/api/handoffs", headers=wrong)).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    slowed = await client.get("/api/handoffs", headers=wrong)
    assert slowed.status == 429 and slowed.headers["Retry-After"] == "1"
    assert "too many wrong admin tokens" in (await slowed.json())["error"]
    also_right = await client.get("/api/handoffs", headers=right)  # a guesser learns nothing while it waits
    assert also_right.status == 429 and (await client.post("/api/model/reload", headers=right)).status == 429

    # Another address, with the right token, is not held up (the test server listens on 127.0.0.1).
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as elsewhere:
        async with elsewhere.get(client.make_url("/api/handoffs"), headers=right) as response:
            assert response.status == 200

    await asyncio.sleep(1.05)
    assert (await client.get("/api/handoffs", headers=wrong)).status == 401  # its wait is over...
    doubled = await client.get("/api/handoffs", headers=wrong)
    assert doubled.status == 429 and doubled.headers["Retry-After"] == "2"  # ...and the next one is longer

    # The chat routes are not admin routes: the address still chats.
    assert (await client.get("/api/conversations/x1")).status == 200
