"""Security headers on every response, CORS on streamed replies, and allowed origins checked
when the settings load."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from bot.errors import InvalidFiles
from serve_support import NO_ACTION_SERVER, make_project, settings_of

SHOP = "https://shop.example"


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir, endpoints=NO_ACTION_SERVER + f"cors:\n  allow_origins: [{SHOP}, 'http://127.0.0.1:8080']\n")


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
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", response.url
    assert "Hello there." in await responses[-1].text()


async def test_a_streamed_reply_carries_cors_for_an_allowed_origin_only(project, serve):
    client, _ = await serve(project, ["One.", "Two."])
    allowed = await client.post("/api/chat/stream", json={"sender": "c1", "message": "hi"}, headers={"Origin": SHOP})
    assert allowed.headers["Content-Type"] == "text/event-stream"
    assert allowed.headers["Access-Control-Allow-Origin"] == SHOP and allowed.headers["Vary"] == "Origin"
    await allowed.read()
    refused = await client.post("/api/chat/stream", json={"sender": "c2", "message": "hi"}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    await refused.read()


@pytest.mark.parametrize("origin", ["https://shop.example/", "https://shop.example/path", "shop.example", "https://a.example; script-src *", "*"])
def test_an_allowed_origin_must_be_an_origin(tmp_path, cache_dir, origin):
    project = make_project(tmp_path / "o", cache_dir, endpoints=f'cors:\n  allow_origins: ["{origin}"]\n')
    with pytest.raises(InvalidFiles) as error:
        settings_of(project)
    assert "endpoints.yml:2:" in str(error.value) and "is not a web origin" in str(error.value)
