"""Rating the bot's answers in the widget, in a real browser (Debian's chromium driven by
Playwright, as in test_widget_browser.py), with the keyboard alone: thumbs up and down under each
bot message, their pressed state, the vote kept across a reload; the launcher's icon drawn as SVG;
the demo page loading with no console error. Skips without /usr/bin/chromium, except in CI."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import expect
from serve_support import make_project, requires_chromium, scripted_model, settings_of

from bot.conversations.events import agent_message
from bot.conversations.search import latest_ratings
from bot.serve.app import create_app
from bot.serve.keys import STORE

REPLY = "Your order ES-1001 is on its way and should arrive tomorrow."

pytestmark = requires_chromium


@pytest.fixture
async def server(tmp_path, cache_dir, tokenizer):
    settings = settings_of(make_project(tmp_path / "p", cache_dir))
    server = TestServer(create_app(settings, load_model=lambda: scripted_model(settings, tokenizer, [REPLY])), port=0)
    await server.start_server()
    yield server
    await server.close()


async def _watched_page(browser):
    """A page, and every console error and uncaught exception it reports from the first moment."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


async def _focused(page) -> dict:
    return await page.evaluate(
        "({label: document.activeElement.getAttribute('aria-label'), "
        "pressed: document.activeElement.getAttribute('aria-pressed')})"
    )


async def _tab_to(page, label: str, key: str = "Tab") -> None:
    """Press Tab (or Shift+Tab) until the element labelled `label` has the focus."""
    for _ in range(12):
        if (await _focused(page))["label"] == label:
            return
        await page.keyboard.press(key)
    raise AssertionError(f"{key} never reached '{label}'; the focus is on {await _focused(page)}")


async def _open_chat(page) -> None:
    await _tab_to(page, "Open chat: Kestrel Mobile")
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == await page.get_by_label("Your message").get_attribute(
        "id"
    )


async def test_rating_an_answer_with_the_keyboard_survives_a_reload(browser, server):
    page, errors = await _watched_page(browser)
    await page.goto(str(server.make_url("/")))

    # The launcher's icon is drawn, not a character some systems have no font for.
    launcher = page.get_by_role("button", name="Open chat: Kestrel Mobile")
    assert await launcher.inner_text() == ""
    icon = await page.locator(".bw-launcher > svg").bounding_box()
    assert icon["width"] == 28 and icon["height"] == 28

    await _open_chat(page)
    await page.keyboard.type("Where is my order ES-1001?")
    await page.keyboard.press("Enter")
    await page.locator(".bw-bot", has_text=REPLY).wait_for(timeout=15000)
    votes = page.get_by_role("group", name="Rate this answer")
    # the reply, not the greeting (it is not stored); its buttons come with the stored message,
    # just after the streamed text
    await expect(votes).to_have_count(1, timeout=15000)
    helpful, unhelpful = (
        votes.get_by_role("button", name="Helpful", exact=True),
        votes.get_by_role("button", name="Not helpful"),
    )

    async def pressed() -> list[str | None]:
        return [await helpful.get_attribute("aria-pressed"), await unhelpful.get_attribute("aria-pressed")]

    async def vote_with(key: str) -> None:
        async with page.expect_response(lambda r: r.url.endswith("/ratings")) as answered:
            await page.keyboard.press(key)
        assert (await answered.value).status == 200

    assert await pressed() == ["false", "false"]

    # From the message box back to the reply's buttons, and "Not helpful" pressed with the keyboard.
    await _tab_to(page, "Not helpful", "Shift+Tab")
    await vote_with("Enter")
    assert await _focused(page) == {"label": "Not helpful", "pressed": "true"}
    assert await helpful.get_attribute("aria-pressed") == "false"

    sender = await page.evaluate("localStorage.getItem('bot-widget-conversation')")
    events = await server.app[STORE].events(sender)
    (seq,) = [e["seq"] for e in events if e["type"] == "bot"]
    assert latest_ratings(events)[seq]["rating"] == "down"
    await server.app[STORE].append(sender, agent_message("Alex here, let me check.", name="Alex"))

    # Reloaded: the vote comes back from the server; an agent's message has no buttons.
    await page.reload()
    await _open_chat(page)
    await page.locator(".bw-agent", has_text="Alex here").wait_for(timeout=10000)
    assert await votes.count() == 1
    assert await pressed() == ["false", "true"]

    # Changed with the keyboard: the other button (Space this time) takes the vote.
    await _tab_to(page, "Helpful", "Shift+Tab")
    await vote_with(" ")
    assert await pressed() == ["true", "false"]
    assert latest_ratings(await server.app[STORE].events(sender))[seq]["rating"] == "up"

    assert errors == []


async def test_the_demo_page_has_an_icon_and_no_console_error(browser, server):
    page, errors = await _watched_page(browser)
    missing: list[str] = []
    page.on("response", lambda r: r.status >= 400 and missing.append(f"{r.status} {r.url}"))
    await page.goto(str(server.make_url("/")))
    await page.get_by_role("button", name="Open chat: Kestrel Mobile").wait_for()
    link = await page.eval_on_selector("link[rel=icon]", "node => node.href")
    answer = await page.request.get(link)
    assert answer.status == 200 and answer.headers["content-type"] == "image/svg+xml"
    assert (await answer.text()).startswith("<svg")
    assert (await page.request.get(str(server.make_url("/favicon.ico")))).headers["content-type"] == "image/svg+xml"
    await page.reload()
    await page.get_by_role("button", name="Open chat: Kestrel Mobile").wait_for()
    assert errors == [] and missing == []
