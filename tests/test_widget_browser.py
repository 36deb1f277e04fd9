"""The widget in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser). Skips without /usr/bin/chromium, except in CI, where .ci/run installs it."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer
from serve_support import make_project, requires_chromium, scripted_model, settings_of

from bot.serve.app import create_app

XSS = 'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> done.'

pytestmark = requires_chromium


@pytest.fixture
async def server(tmp_path, cache_dir, tokenizer):
    settings = settings_of(make_project(tmp_path / "p", cache_dir))
    replies = ["Your order ES-1001 is on its way and should arrive tomorrow before noon, tracked by courier.", XSS]
    model = scripted_model(settings, tokenizer, replies, delay=0.06)
    server = TestServer(create_app(settings, load_model=lambda: model), port=0)
    await server.start_server()
    yield server
    await server.close()


async def _bot_texts(page) -> list[str]:
    return await page.locator(".bw-log .bw-bot").all_inner_texts()


async def test_chat_streams_survives_reload_and_never_runs_bot_html(browser, server):
    page = await browser.new_page()
    await page.goto(str(server.make_url("/")))

    launcher = page.get_by_role("button", name="Open chat: Kestrel Mobile")
    await launcher.click()
    log = page.get_by_role("log")
    assert await log.get_attribute("aria-live") == "polite"
    assert await page.evaluate("document.activeElement.id") == await page.get_by_label("Your message").get_attribute(
        "id"
    )

    await page.get_by_label("Your message").fill("Where is my order ES-1001?")
    async with page.expect_response(lambda r: r.url.endswith("/api/chat/stream")) as answered:
        await page.keyboard.press("Enter")
    # Watch the bot's bubble grow while the reply is generated.
    seen = set()
    for _ in range(200):
        texts = await _bot_texts(page)
        if len(texts) >= 2:  # the greeting, then the reply
            seen.add(texts[-1])
            if texts[-1].endswith("courier."):
                break
        await asyncio.sleep(0.03)
    assert (await _bot_texts(page))[-1].startswith("Your order ES-1001 is on its way")
    assert len([s for s in seen if s and not s.endswith("courier.")]) >= 3  # streamed: several partial states

    await (await answered.value).finished()  # the reply's stream is done: the widget takes a new message

    # A reply full of HTML is shown as text and runs nothing.
    await page.get_by_label("Your message").fill("show me something")
    await page.keyboard.press("Enter")
    await page.locator(".bw-bot", has_text="done.").wait_for(timeout=15000)
    assert XSS in (await _bot_texts(page))[-1]
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator(".bw-log img, .bw-log script").count() == 0

    # Reload: the same conversation comes back from the server.
    await page.reload()
    await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
    await page.locator(".bw-user", has_text="show me something").wait_for(timeout=5000)
    users = await page.locator(".bw-log .bw-user").all_inner_texts()
    assert users == ["Where is my order ES-1001?", "show me something"]
    bots = await _bot_texts(page)
    assert bots[0].startswith("Your order ES-1001") and XSS in bots[1]  # no greeting on a restored conversation
    assert await page.evaluate("window.__pwned") is None

    # The server goes away: the customer is told, and the widget keeps trying.
    await server.close()
    await page.get_by_label("Your message").fill("hello?")
    await page.keyboard.press("Enter")
    status = page.get_by_role("status")
    await status.wait_for(timeout=10000)
    assert "Can't reach the chat server. Retrying" in await status.inner_text()


async def test_full_screen_on_a_phone(browser, server):
    page = await browser.new_page(viewport={"width": 390, "height": 800})
    await page.goto(str(server.make_url("/")))
    await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
    box = await page.get_by_role("dialog").bounding_box()
    assert box["width"] == 390 and box["height"] == 800


async def test_handoff_and_agent_messages_in_the_widget(browser, tmp_path, cache_dir, tokenizer):
    import aiohttp

    settings = settings_of(make_project(tmp_path / "h", cache_dir))
    handoff = '<tool_call>{"name": "handoff_to_human", "arguments": {"reason": "customer asked"}}</tool_call>'
    model = scripted_model(settings, tokenizer, [handoff])
    server = TestServer(create_app(settings, load_model=lambda: model, admin_token="agent"), port=0)
    await server.start_server()
    try:
        page = await browser.new_page()
        await page.goto(str(server.make_url("/")))
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        await page.get_by_label("Your message").fill("I want to speak to a person")
        await page.keyboard.press("Enter")
        await page.locator(".bw-bot", has_text="passing you to a colleague").wait_for(timeout=10000)
        status = page.get_by_role("status")
        assert "Waiting for a member of our team" in await status.inner_text()

        sender = await page.evaluate("localStorage.getItem('bot-widget-conversation')")
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer agent"}) as agent:
            url = server.make_url(f"/api/conversations/{sender}/messages")
            async with agent.post(
                url, json={"text": "Hi, I'm Alex. <b>How</b> can I help?", "agent": "Alex"}
            ) as response:
                assert response.status == 200
            message = page.locator(".bw-agent")
            await message.wait_for(timeout=5000)
            # distinct, labelled, as text
            assert await message.inner_text() == "Alex\nHi, I'm Alex. <b>How</b> can I help?"
            assert await page.locator(".bw-log b").count() == 0
            async with agent.post(server.make_url(f"/api/conversations/{sender}/resume")) as response:
                assert response.status == 200
        await page.locator(".bw-note", has_text="chatting with the assistant again").wait_for(timeout=5000)
        assert await status.is_hidden()
    finally:
        await server.close()


async def test_buttons_become_quick_replies_that_send_their_payload(browser, tmp_path, cache_dir, tokenizer):
    from bot.conversations.events import bot_message
    from bot.serve.keys import STORE

    settings = settings_of(make_project(tmp_path / "q", cache_dir))
    model = scripted_model(settings, tokenizer, ["Good choice."])
    server = TestServer(create_app(settings, load_model=lambda: model), port=0)
    await server.start_server()
    try:
        page = await browser.new_page()
        await page.goto(str(server.make_url("/")))
        sender = await page.evaluate("localStorage.getItem('bot-widget-conversation')")
        buttons = [
            {"title": "Plus 100GB (£20)", "payload": "I'd like the Plus 100GB plan"},
            {"title": "Unlimited (£28)", "payload": "I'd like Unlimited"},
        ]
        await server.app[STORE].append(sender, bot_message("Which plan would you like?", buttons=buttons))
        await page.reload()
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        await page.get_by_role("button", name="Plus 100GB (£20)").click()
        await page.locator(".bw-bot", has_text="Good choice.").wait_for(timeout=10000)
        assert await page.locator(".bw-user").all_inner_texts() == ["Plus 100GB (£20)"]  # the title is shown...
        assert "I'd like the Plus 100GB plan" in tokenizer.decode(model.engine.prompts[-1])  # ...the payload is sent
        assert await page.locator(".bw-reply").count() == 0  # used quick replies go away
    finally:
        await server.close()


async def test_the_demo_page_and_the_console_say_when_the_base_model_answers(browser, tmp_path, cache_dir, tokenizer):
    from bot.pipelines.first_model import FINE_TUNING

    settings = settings_of(make_project(tmp_path / "q", cache_dir))
    interim = scripted_model(settings, tokenizer, ["Hello."], model_id=None)
    interim.stage = FINE_TUNING
    trained = scripted_model(settings, tokenizer, ["Hello."])
    for model, note in ((interim, FINE_TUNING), (trained, None)):
        server = TestServer(create_app(settings, load_model=lambda model=model: model), port=0)
        await server.start_server()
        try:
            page = await browser.new_page()
            await page.goto(str(server.make_url("/")))
            stage = page.locator("#model-stage")
            serving = page.locator("#serving")
            if note:
                await stage.filter(has_text=note).wait_for()
                assert "Not fine-tuned yet" in await stage.inner_text()
            else:
                await page.wait_for_load_state("networkidle")
                assert await stage.is_hidden()
            await page.goto(str(server.make_url("/console")))
            await serving.filter(has_text="Serving: " + (note or "trained model scripted")).wait_for()
        finally:
            await server.close()


# Records every text the typing bubble shows, however briefly.
WATCH_TYPING = """
window.__doing = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll(".bw-doing")) {
    if (!window.__doing.includes(node.textContent)) window.__doing.push(node.textContent);
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


async def test_an_actions_status_shows_while_it_runs_then_goes(browser, tmp_path, cache_dir, tokenizer):
    settings = settings_of(make_project(tmp_path / "p", cache_dir))
    call = '<tool_call>{"name": "check_order", "arguments": {"order_id": "ES-1001"}}</tool_call>'
    model = scripted_model(settings, tokenizer, [call], delay=0.05)
    server = TestServer(create_app(settings, load_model=lambda: model), port=0)
    await server.start_server()
    try:
        page = await browser.new_page()
        await page.add_init_script(WATCH_TYPING)
        await page.goto(str(server.make_url("/")))
        await page.get_by_role("button", name="Open chat: Kestrel Mobile").click()
        await page.get_by_label("Your message").fill("Where is my order ES-1001?")
        async with page.expect_response(lambda r: r.url.endswith("/api/chat/stream")) as answered:
            await page.keyboard.press("Enter")
        await (await answered.value).finished()
        await page.locator(".bw-bot", has_text="can't look that up").wait_for(
            timeout=15000
        )  # the action server is down
        assert await page.evaluate("window.__doing") == ["Checking your order…"]
        assert await page.locator(".bw-typing").count() == 0  # gone once the reply came
        assert "Checking your order" not in " ".join(await _bot_texts(page))
    finally:
        await server.close()
