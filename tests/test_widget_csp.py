"""The widget under Content-Security-Policies, in a real browser (Debian's chromium driven by
Playwright, as in test_widget_browser.py): on a host page of another origin whose own CSP allows
no inline script or style, and on the bot's demo page under the bot's CSP. The customer chats,
the widget is styled, and the browser reports no CSP violation. Skips without /usr/bin/chromium,
except in CI, where .ci/run installs it."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from serve_support import NO_ACTION_SERVER, make_project, requires_chromium, scripted_model, settings_of

from bot.serve.app import create_app

REPLY = "Your order ES-1001 is on its way and should arrive tomorrow."

pytestmark = requires_chromium

# Every CSP violation the page reports, and every console error, recorded from the first moment.
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""

HOST_PAGE = (
    "<!doctype html>\n"
    '<html lang="en"><head><meta charset="utf-8"><title>Shop</title><link rel="stylesheet" href="/shop.css"></head>\n'
    '<body><h1>A shop with a strict CSP</h1><script src="{bot}/widget.js"></script>'
    '<script src="/shop.js"></script></body></html>'
)


async def _watched_page(browser):
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    await page.add_init_script(WATCH_CSP)
    return page, errors


async def _chat(page) -> None:
    await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
    await page.get_by_label("Your message").fill("Where is my order ES-1001?")
    await page.keyboard.press("Enter")
    await page.locator(".bw-bot", has_text="arrive tomorrow.").wait_for(timeout=15000)


async def _computed(page, selector: str, *properties: str) -> dict:
    return await page.eval_on_selector(
        selector,
        "(node, names) => Object.fromEntries(names.map(n => [n, getComputedStyle(node)[n]]))",
        list(properties),
    )


@pytest.fixture
async def shop(tmp_path, cache_dir, tokenizer):
    """(host page server, bot server, the host page's CSP): the shop on one origin, the bot on another."""
    bot_origin: dict[str, str] = {}

    async def host_page(request):
        return web.Response(
            text=HOST_PAGE.format(bot=bot_origin["url"]),
            content_type="text/html",
            headers={"Content-Security-Policy": policy()},
        )

    async def host_script(request):
        init = (
            f'BotWidget.init({{server: "{bot_origin["url"]}", '
            f'title: "Kestrel Mobile", greeting: "Hello from the shop."}});'
        )
        return web.Response(text=init, content_type="text/javascript")

    async def host_style(request):
        return web.Response(text="h1 { color: rgb(0, 128, 0); }", content_type="text/css")

    def policy() -> str:
        bot = bot_origin["url"]
        return f"default-src 'self'; script-src 'self' {bot}; style-src 'self'; connect-src {bot}"

    host_app = web.Application()
    host_app.router.add_get("/", host_page)
    host_app.router.add_get("/shop.js", host_script)
    host_app.router.add_get("/shop.css", host_style)
    host = TestServer(host_app, port=0)
    await host.start_server()
    shop_origin = str(host.make_url("")).rstrip("/")

    endpoints = NO_ACTION_SERVER + f"cors:\n  allow_origins: [{shop_origin}]\n"
    settings = settings_of(make_project(tmp_path / "p", cache_dir, endpoints=endpoints))
    model = scripted_model(settings, tokenizer, [REPLY], delay=0.02)
    bot = TestServer(create_app(settings, load_model=lambda: model), port=0)
    await bot.start_server()
    bot_origin["url"] = str(bot.make_url("")).rstrip("/")
    yield host, bot, policy()
    await bot.close()
    await host.close()


async def test_widget_on_a_host_page_with_a_strict_csp(browser, shop):
    host, bot, policy = shop
    assert "unsafe-inline" not in policy and str(host.make_url("")) != str(bot.make_url(""))
    page, errors = await _watched_page(browser)
    response = await page.goto(str(host.make_url("/")))
    assert response.headers["content-security-policy"] == policy

    await _chat(page)  # history, the streamed reply and the live feed, all from the bot's origin
    assert (await page.locator(".bw-log .bw-bot").all_inner_texts()) == ["Hello from the shop.", REPLY]

    # Styled: the widget's own stylesheet applies (a bare button is grey, square and sized by its text).
    launcher = await _computed(page, ".bw-launcher", "width", "height", "borderRadius", "backgroundColor", "cursor")
    assert launcher == {
        "width": "56px",
        "height": "56px",
        "borderRadius": "50%",
        "backgroundColor": "rgb(11, 95, 255)",
        "cursor": "pointer",
    }
    assert await _computed(page, ".bw-root", "position", "zIndex") == {"position": "fixed", "zIndex": "2147483000"}
    assert await _computed(page, ".bw-panel", "display", "width", "flexDirection") == {
        "display": "flex",
        "width": "360px",
        "flexDirection": "column",
    }
    assert (await _computed(page, ".bw-user", "backgroundColor"))["backgroundColor"] == "rgb(11, 95, 255)"

    assert await page.evaluate("window.__violations") == []
    assert not [e for e in errors if "Content Security Policy" in e], errors

    # The check can fail: what the widget did before (a <style> element) is refused and reported here.
    await page.evaluate("""() => { const s = document.createElement("style");
        s.textContent = ".bw-launcher { width: 99px !important; }"; document.head.appendChild(s); }""")
    await page.wait_for_function("window.__violations.length > 0", timeout=5000)
    assert (await page.evaluate("window.__violations"))[0].startswith("style-src")
    assert (await _computed(page, ".bw-launcher", "width"))["width"] == "56px"


async def test_demo_page_runs_under_its_own_csp(browser, tmp_path, cache_dir, tokenizer):
    settings = settings_of(make_project(tmp_path / "d", cache_dir))
    model = scripted_model(settings, tokenizer, [REPLY])
    server = TestServer(create_app(settings, load_model=lambda: model), port=0)
    await server.start_server()
    try:
        page, errors = await _watched_page(browser)
        response = await page.goto(str(server.make_url("/")))
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        await _chat(page)
        assert (await _computed(page, "body", "maxWidth"))["maxWidth"] == "704px"  # /demo.css: 44rem
        assert (await _computed(page, ".bw-launcher", "borderRadius"))["borderRadius"] == "50%"
        assert await page.evaluate("window.__violations") == []
        await page.reload()  # revalidated from the browser's cache (304): still its own policy
        await page.locator(".bw-user", has_text="Where is my order").wait_for(state="attached", timeout=10000)
        assert (await _computed(page, ".bw-launcher", "borderRadius"))["borderRadius"] == "50%"
        assert await page.evaluate("window.__violations") == []
        assert not [e for e in errors if "Content Security Policy" in e], errors
    finally:
        await server.close()
