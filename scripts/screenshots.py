"""The README's two screenshots, taken from a running bot: the widget in a conversation, and the
operator console's conversation list.

    BOT_ADMIN_TOKEN=secret .venv/bin/bot serve --actions actions &     # in another shell
    BOT_ADMIN_TOKEN=secret .venv/bin/python scripts/screenshots.py     # writes docs/images/*.png

Debian's chromium (/usr/bin/chromium) driven by Playwright; nothing is downloaded. The widget
conversation is a real one with whatever model the server serves, so the pictures show the
bot as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ("hi, is there anything wrong with the network near M14 5RT? no signal since this morning",)


async def main(url: str, out: Path, token: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium")
        page = await browser.new_page(viewport={"width": 900, "height": 760})
        await page.goto(url + "/")
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        for text in MESSAGES:
            before = await page.locator(".bw-log .bw-bot").count()  # the greeting is one
            await page.get_by_label("Your message").fill(text)
            await page.keyboard.press("Enter")
            await page.locator(".bw-log .bw-bot").nth(before).wait_for(timeout=120_000)
            await page.locator(".bw-typing").wait_for(state="detached", timeout=120_000)  # the reply has ended
            await page.wait_for_timeout(3000)  # a call and the reply after it come as two bot messages
        await page.wait_for_timeout(1500)
        await page.screenshot(path=out / "widget.png")

        console = await browser.new_page(viewport={"width": 1280, "height": 760})
        await console.goto(url + "/console")
        await console.get_by_label("Admin token").fill(token)
        await console.get_by_role("button", name="Sign in").click()
        await console.get_by_role("heading", name="Conversations").wait_for(timeout=20_000)
        await console.wait_for_timeout(2000)
        await console.screenshot(path=out / "console.png")
        await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5005")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    token = os.environ.get("BOT_ADMIN_TOKEN")
    if not token:
        sys.exit("set BOT_ADMIN_TOKEN to the token the server was started with")
    asyncio.run(main(args.url.rstrip("/"), args.out, token))
