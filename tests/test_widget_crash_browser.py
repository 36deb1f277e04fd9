"""The widget when the server dies mid-reply (SIGKILL) and comes back, in a real browser
(Debian's chromium driven by Playwright, as in test_widget_browser.py): the message is not sent
twice, the cut reply shows "Sorry, that reply was interrupted" with "Try again", and the button
sends the message again and the conversation goes on. Skips without /usr/bin/chromium, except
in CI, where .ci/run installs it."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

from serve_support import make_project, requires_chromium
from server_process import ServerProcess

REPLY = "Thanks for waiting, I am looking into that for you right now, one moment please."

pytestmark = requires_chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(url: str, sender: str) -> list[tuple]:
    with urllib.request.urlopen(f"{url}/api/conversations/{sender}", timeout=5) as response:
        return [(e["type"], e.get("text")) for e in json.load(response)["events"]]


async def test_a_reply_cut_by_a_crash_offers_try_again(browser, tmp_path, cache_dir):
    server = ServerProcess(make_project(tmp_path / "p", cache_dir), _free_port(), delay=0.1, reply=REPLY)
    try:
        server.start()
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        sender = await page.evaluate("localStorage.getItem('bot-widget-conversation')")
        posts = []
        page.on("request", lambda r: posts.append(r.post_data) if r.url.endswith("/api/chat/stream") else None)

        await page.get_by_label("Your message").fill("Where is my order ES-1001?")
        await page.keyboard.press("Enter")
        await page.locator(".bw-bot", has_text="Thanks for waiting").wait_for(timeout=15000)  # mid-reply
        server.signal(signal.SIGKILL)
        server.wait(10)
        server.start()

        await page.locator(".bw-bot", has_text="Sorry, that reply was interrupted.").wait_for(timeout=20000)
        assert len(posts) == 1  # stored once: the widget did not send it again
        assert _history(server.url, sender) == [("user", "Where is my order ES-1001?"), ("interrupted", None)]
        assert await page.locator(".bw-bot", has_text="Thanks for waiting").count() == 0  # the cut text is gone
        assert await page.get_by_role("status").is_hidden()

        await page.get_by_role("button", name="Try again").click()
        await page.locator(".bw-bot", has_text="one moment please.").wait_for(timeout=15000)
        assert await page.locator(".bw-user").all_inner_texts() == ["Where is my order ES-1001?"] * 2
        assert await page.get_by_role("button", name="Try again").count() == 0
        assert _history(server.url, sender)[2:] == [("user", "Where is my order ES-1001?"), ("bot", REPLY)]

        # It goes on normally, and a reload shows the same conversation, without a stale button.
        await page.get_by_label("Your message").fill("Thanks")
        await page.keyboard.press("Enter")
        await page.locator(".bw-bot", has_text="one moment please.").nth(1).wait_for(timeout=15000)
        await page.reload()
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        await page.locator(".bw-user", has_text="Thanks").wait_for(timeout=5000)
        bots = await page.locator(".bw-log .bw-bot").all_inner_texts()
        assert bots == ["Sorry, that reply was interrupted.", REPLY, REPLY]
        assert await page.get_by_role("button", name="Try again").count() == 0
    finally:
        server.stop()
