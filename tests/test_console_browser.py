"""The operator console in a real browser (Debian's chromium driven by Playwright, as in
test_widget_browser.py): signing in with the admin token, finding a rated-down conversation and
reading its timeline, hostile text shown as text, activating and rolling back a model, the
keyboard alone, a 375 px wide phone, and no CSP violation. Skips without /usr/bin/chromium,
except in CI, where .ci/run installs it."""

from __future__ import annotations

import sys

import pytest
from aiohttp.test_utils import TestServer
from console_support import active_model_loader, add_model, rate, talk
from serve_support import ADMIN_TOKEN, make_project, requires_chromium, settings_of

from bot import models
from bot.conversations.events import action_executed, agent_message, handed_off, resumed
from bot.serve.app import create_app
from bot.serve.keys import STORE
from bot.serve.routes.train import TRAINING
from bot.serve.throttle import ADMIN_FAILURES

pytestmark = requires_chromium

HOSTILE = 'Look <img src=x onerror="window.__pwned=1"> here <script>window.__pwned=2</script>'
LONG = "a-very-long-word-without-any-space-" * 12  # must wrap at 375 px, not push the page wider
WATCH = (
    "\n"
    "window.__violations = [];\n"
    'document.addEventListener("securitypolicyviolation", (e) => '
    'window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline")));\n'
)


@pytest.fixture
async def console(tmp_path, cache_dir, tokenizer):
    """(server, project): two trained models (the older active) and stored conversations."""
    project = make_project(tmp_path / "p", cache_dir)
    settings = settings_of(project)
    add_model(settings, "20261127-100000")
    add_model(settings, "20261127-110000")
    models.activate(settings.models_dir, "20261127-100000")
    server = TestServer(
        create_app(settings, load_model=active_model_loader(settings, tokenizer), admin_token=ADMIN_TOKEN), port=0
    )
    await server.start_server()
    store = server.app[STORE]
    await talk(store, "calm-1", [("What plans do you have?", "We have Plus and Unlimited.")], start=1_800_000_000.0)
    angry = await talk(
        store,
        "angry-2",
        [(HOSTILE, "Sorry, I did not understand."), (LONG, "Could you say that again?")],
        start=1_800_000_100.0,
    )
    await rate(store, "angry-2", angry[1]["seq"], "down", comment="useless <b>answer</b>", at=1_800_000_150.0)
    await store.append(
        "angry-2",
        dict(
            action_executed("check_order", {"order_id": "ES-1001"}, {"status": "shipped"}),
            timestamp=1_800_000_160.0,
        ),
    )
    await store.append("angry-2", dict(handed_off("rule", "asked for a person"), timestamp=1_800_000_170.0))
    await store.append("angry-2", dict(agent_message("Hi, Alex here.", name="Alex"), timestamp=1_800_000_180.0))
    await store.append("angry-2", dict(resumed(), timestamp=1_800_000_190.0))
    yield server, project
    await server.close()


# Stands in for `bot train` (called with `-C PROJECT train --progress-file FILE`): writes the progress
# file as training does; after its first step it waits for the test to create PROJECT/release.
FAKE_TRAIN = """
import json, pathlib, sys, time
args = sys.argv[1:]
root, progress = pathlib.Path(args[args.index("-C") + 1]), pathlib.Path(args[args.index("--progress-file") + 1])
progress.parent.mkdir(parents=True, exist_ok=True)
def write(record):
    with progress.open("a") as out:
        out.write(json.dumps(record) + "\\n")
print("training <b>4</b> steps", flush=True)
write({"event": "step", "step": 1, "steps": 4, "eta_s": 30.0, "loss": 2.5})
while not (root / "release").exists():
    time.sleep(0.05)
for step in (2, 3, 4):
    write({"event": "step", "step": step, "steps": 4, "eta_s": 10.0 * (4 - step), "loss": 2.5 - step / 4})
folder = root / "models" / "20261127-120000"
folder.mkdir(parents=True)
(folder / "manifest.json").write_text(json.dumps({"id": "20261127-120000", "base_model": "bundled"}))
(root / "models" / "ACTIVE").write_text("20261127-120000\\n")
write({"event": "done", "model_id": "20261127-120000", "trained": True, "activated": True,
       "gate": {"passed": True, "summary": "it passes 100% of adversarial tests and leaks nothing"}})
print("done", flush=True)
"""


async def _page(browser, server, **options):
    page = await browser.new_page(**options)
    errors: list[str] = []
    # Script errors, and failed requests other than the favicon (named by URL, not the console's bare
    # "Failed to load resource").

    def on_console(message) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def on_response(response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            errors.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", on_response)
    await page.add_init_script(WATCH)
    await page.goto(str(server.make_url("/console")))
    return page, errors


async def _sign_in(page, token: str = ADMIN_TOKEN) -> None:
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def _clean(page, errors) -> None:
    assert await page.evaluate("window.__pwned") is None
    assert await page.evaluate("window.__violations") == []
    assert errors == []


async def test_sign_in_keeps_the_token_in_the_tab_only(browser, console):
    server, _ = console
    page, errors = await _page(browser, server)
    await _sign_in(page, "wrong")
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "admin token is wrong" in await alert.inner_text()
    assert await page.get_by_role("navigation", name="Panels").is_hidden()
    assert await page.evaluate("sessionStorage.getItem('bot-console-token')") is None

    await _sign_in(page)
    await page.get_by_role("heading", name="Conversations", exact=True).wait_for()
    assert await page.evaluate("sessionStorage.getItem('bot-console-token')") == ADMIN_TOKEN
    assert await page.evaluate("localStorage.length") == 0
    await page.reload()  # the same tab: still signed in
    await page.get_by_role("heading", name="Conversations", exact=True).wait_for()
    other, _ = await _page(browser, server)  # another tab (its own session): asked again
    await other.get_by_label("Admin token").wait_for()
    assert await other.get_by_role("navigation", name="Panels").is_hidden()

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("Admin token").wait_for()
    assert await page.evaluate("sessionStorage.getItem('bot-console-token')") is None
    assert errors[0].startswith("401 ") and errors[0].endswith("/api/handoffs")  # the wrong token
    await _clean(page, errors[1:])


async def test_too_many_wrong_tokens_say_how_long_to_wait(browser, console):
    server, _ = console
    server.app[ADMIN_FAILURES].clock = lambda: 1000.0  # time stands still: the wait never runs out
    page, _ = await _page(browser, server)
    alert = page.get_by_role("alert")
    for _ in range(server.app[ADMIN_FAILURES].allowed):
        await _sign_in(page, "guess")
        await alert.filter(has_text="admin token is wrong").wait_for()
        await page.evaluate("document.getElementById('notice').textContent = ''")
    await _sign_in(page)  # even the right token waits now
    await alert.filter(has_text="Too many wrong tokens").wait_for()
    assert "try again in 1 s." in await alert.inner_text()
    assert await page.get_by_role("navigation", name="Panels").is_hidden()


async def test_a_rated_down_conversation_and_its_timeline_with_hostile_text_shown_as_text(browser, console):
    server, _ = console
    page, errors = await _page(browser, server)
    await _sign_in(page)
    found = page.get_by_role("list", name="Conversations found")
    await found.get_by_role("button").nth(1).wait_for()
    assert await found.get_by_role("button").count() == 2

    await page.get_by_label("Rated down").check()
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("status").filter(has_text="1 found").wait_for()
    row = found.get_by_role("button")
    assert await row.count() == 1 and "angry-2" in await row.inner_text() and "rated down ×1" in await row.inner_text()
    await row.click()

    timeline = page.get_by_role("list", name="Timeline").first
    await timeline.locator("li").nth(8).wait_for()
    items = await timeline.locator("li.event").all_inner_texts()
    assert items[0].startswith("#") and "Customer" in items[0] and HOSTILE in items[0]
    rated = items[1].split(" ")[0]  # "#seq" of the bot's first answer
    assert "Rating: down" in items[4] and f"of message {rated}: useless <b>answer</b>" in items[4]
    assert "Action check_order" in items[5]
    assert '"order_id": "ES-1001"' in items[5] and '"status": "shipped"' in items[5]
    assert "Handed off to a person" in items[6] and "asked for a person" in items[6]
    assert "Agent Alex" in items[7] and "Given back to the bot" in items[8]
    assert await page.locator("main img, main script, main b").count() == 0  # nothing from the data became an element
    await _clean(page, errors)

    await page.get_by_label("Rated down").uncheck()
    await page.get_by_label("Words").fill("plans")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("status").filter(has_text="1 found").wait_for()
    assert "calm-1" in await found.get_by_role("button").inner_text()


async def test_a_model_is_activated_and_rolled_back_with_the_keyboard_alone(browser, console):
    server, project = console
    page, errors = await _page(browser, server)
    await page.keyboard.type(ADMIN_TOKEN)  # the token field has the focus when the page opens
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="Conversations", exact=True).wait_for()

    async def tab_to(name: str) -> None:
        for _ in range(60):
            await page.keyboard.press("Tab")
            focused = await page.evaluate("document.activeElement.textContent.trim()")
            if focused == name:
                outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
                assert outline != "none", f"no visible focus on {name}"
                return
        raise AssertionError(f"Tab never reached {name}")

    await tab_to("Models")
    await page.keyboard.press("Enter")
    await page.get_by_role("heading", name="20261127-110000").wait_for()
    cards = page.get_by_role("list", name="Trained models").locator("li.card")
    shown = await cards.first.inner_text()
    assert "adversarial passed" in shown and "Gate: passed" in shown
    assert "conversations passed\n55%" in shown  # whole conversations beside the held-out scores
    await tab_to("Activate 20261127-110000")
    await page.keyboard.press("Enter")
    await page.get_by_role("status").filter(has_text="Now serving 20261127-110000").wait_for()
    health = await (await page.request.get(str(server.make_url("/health")))).json()
    assert health["model"]["id"] == "20261127-110000"
    assert models.active_id(project / "models") == "20261127-110000"

    await tab_to("Roll back to 20261127-100000")  # the one active before is marked as such
    await page.keyboard.press("Enter")
    await page.get_by_role("status").filter(has_text="Now serving 20261127-100000").wait_for()
    health = await (await page.request.get(str(server.make_url("/health")))).json()
    assert health["model"]["id"] == "20261127-100000"

    await tab_to("Report of 20261127-100000")
    await page.keyboard.press("Enter")
    report = page.locator("#model-report")
    await report.get_by_role("heading", name="fine-tuned").wait_for()
    assert "chrF" in await report.inner_text() and "90%" in await report.inner_text()
    await _clean(page, errors)


async def test_every_panel_fits_a_375_px_phone(browser, console):
    server, _ = console
    page, errors = await _page(browser, server, viewport={"width": 375, "height": 740})
    await _sign_in(page)
    await page.get_by_role("list", name="Conversations found").get_by_role("button").nth(1).wait_for()
    await page.get_by_role("list", name="Conversations found").get_by_role("button", name="angry-2").click()
    await page.get_by_role("list", name="Timeline").first.locator("li").nth(8).wait_for()
    await page.get_by_role(
        "button", name="Make a draft from this conversation"
    ).click()  # the draft editor stays open in Drafts
    await page.get_by_role("heading", name="Draft conversation-angry-2").wait_for()
    await page.get_by_role("navigation", name="Panels").get_by_role("button", name="Models").click()
    await page.get_by_role("button", name="Report of 20261127-110000").click()
    await page.locator("#model-report").get_by_role("heading", name="fine-tuned").wait_for()
    for panel in ("Conversations", "Handoff queue", "Drafts", "Preferences", "Models", "Train"):
        await page.get_by_role("navigation", name="Panels").get_by_role("button", name=panel).click()
        await page.get_by_role("heading", name=panel, exact=True).wait_for()
        await page.wait_for_load_state("networkidle")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{panel}: the page is {width} px wide"
    assert await page.evaluate("window.__pwned") is None and await page.evaluate("window.__violations") == []


async def test_training_shows_its_progress_and_gate_and_the_new_model_is_served(browser, console, tmp_path):
    server, project = console
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    server.app[TRAINING].command = [sys.executable, str(script)]
    page, errors = await _page(browser, server)
    await _sign_in(page)
    await page.get_by_role("navigation", name="Panels").get_by_role("button", name="Train").click()
    await page.get_by_role("button", name="Start training").click()
    facts = page.locator("#train-facts")
    await facts.filter(has_text="1 of 4").wait_for()
    assert "running" in await facts.inner_text() and "2.500" in await facts.inner_text()
    assert await page.get_by_role("button", name="Start training").is_disabled()
    assert await page.get_by_role("button", name="Cancel training").is_visible()
    # the child's output, as text
    await page.locator("#train-log").filter(has_text="training <b>4</b> steps").wait_for()

    (project / "release").write_text("")
    await facts.filter(has_text="succeeded").wait_for(timeout=20000)  # followed by polling GET /api/train
    assert "4 of 4" in await facts.inner_text() and "20261127-120000" in await facts.inner_text()
    assert await page.get_by_role("progressbar", name="Training progress").get_attribute("value") == "4"
    assert "Gate: passed" in await page.locator("#train-gate").inner_text()
    await page.get_by_role("button", name="Serve 20261127-120000 now").click()
    await page.get_by_role("status").filter(has_text="Now serving 20261127-120000").wait_for()
    health = await (await page.request.get(str(server.make_url("/health")))).json()
    assert health["model"]["id"] == "20261127-120000"
    assert await page.locator("main b").count() == 0
    await _clean(page, errors)


async def test_a_draft_made_from_a_conversation_is_fixed_in_place_and_accepted(browser, console):
    server, project = console
    page, errors = await _page(browser, server)
    await _sign_in(page)
    await page.get_by_label("Rated down").check()
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("status").filter(has_text="1 found").wait_for()
    await page.get_by_role("list", name="Conversations found").get_by_role("button", name="angry-2").click()
    await page.get_by_role("button", name="Make a draft from this conversation").click()

    title = page.get_by_role("heading", name="Draft conversation-angry-2")
    await title.wait_for()
    assert await page.get_by_role("heading", name="Drafts", exact=True).is_visible()  # the Drafts panel opened on it
    text = page.get_by_label("Draft text (YAML)")
    draft = await text.input_value()
    assert "draft: true" in draft and HOSTILE.replace('"', '\\"') in draft  # the customer's words, quoted in YAML
    problems = page.locator("#draft-problems-title")
    assert await problems.inner_text() == "No problems: the draft is valid."

    # A mistake (with hostile text in it) is saved: the problem shows with its line, and goes away once fixed.
    broken = draft.replace("      - bot:", '      - <img src=x onerror="window.__pwned=3">:', 1)
    await text.fill(broken)
    await page.get_by_role("button", name="Save and check").click()
    await problems.filter(has_text="1 problem(s)").wait_for()
    broken_lines = broken.splitlines()
    image_line = next(x for x in broken_lines if "onerror" in x and x.lstrip().startswith("- <img"))
    line = broken_lines.index(image_line) + 1
    problem = page.locator("#draft-problems li")
    assert await problem.count() == 1
    assert f"Go to line {line}" in await problem.inner_text() and "a turn needs one of" in await problem.inner_text()
    # the list follows the save
    await page.get_by_role("list", name="Drafts").filter(has_text="1 problem(s)").wait_for()
    assert await text.get_attribute("aria-invalid") == "true"
    await page.get_by_role("button", name=f"Go to line {line}").click()
    selected = await text.evaluate("t => t.value.slice(t.selectionStart, t.selectionEnd)")
    assert selected.lstrip().startswith("- <img") and await page.evaluate("document.activeElement.id") == "draft-text"
    accept = page.get_by_role("button", name="Accept", exact=True)
    await accept.click()
    await page.get_by_role("status").filter(has_text="Not accepted").wait_for()  # refused while invalid

    await text.fill(broken.replace('- <img src=x onerror="window.__pwned=3">:', "- bot:"))
    await page.get_by_role("button", name="Save and check").click()
    await problems.filter(has_text="No problems").wait_for()
    assert await problem.count() == 0 and await text.get_attribute("aria-invalid") == "false"

    await accept.click()
    await (
        page.get_by_role("status")
        .filter(has_text="accepted: written to training_data/dialogues/conversation-angry-2.yml")
        .wait_for()
    )
    written = (project / "training_data" / "dialogues" / "conversation-angry-2.yml").read_text(encoding="utf-8")
    assert "draft: true" not in written and "window.__pwned=1" in written
    assert not (project / "training_data" / "drafts" / "conversation-angry-2.yml").exists()
    assert await page.get_by_role("list", name="Drafts").get_by_role("button").count() == 0
    assert await page.locator("main img, main script").count() == 0
    await _clean(page, [e for e in errors if not e.startswith("409 ")])  # the refused accept


async def test_the_handoff_queue_an_agent_reply_and_giving_back(browser, console):
    server, _ = console
    store = server.app[STORE]
    await talk(
        store,
        "waiting-4",
        [("I want a person <img src=x onerror=window.__pwned=4>", "Passing you to a colleague.")],
        start=1_800_000_300.0,
    )
    await store.append("waiting-4", dict(handed_off("rule", "asked for a person"), timestamp=1_800_000_302.0))
    page, errors = await _page(browser, server)
    await _sign_in(page)
    await page.get_by_role("navigation", name="Panels").get_by_role("button", name="Handoff queue").click()
    queue = page.get_by_role("list", name="Waiting for a person")
    await queue.get_by_role("button").first.wait_for()
    assert await queue.get_by_role("button").count() == 1  # angry-2 was given back to the bot
    assert "asked for a person" in await queue.inner_text() and "<img src=x" in await queue.inner_text()
    await queue.get_by_role("button", name="waiting-4").click()
    await page.get_by_label("Your name (shown to the customer)").fill("Sam")
    await page.get_by_label("Reply to the customer").fill("Hello, Sam here <b>now</b>.")
    await page.get_by_role("button", name="Send reply").click()
    await page.get_by_role("status").filter(has_text="Sent.").wait_for()
    timeline = page.locator("#handoff-timeline")
    await timeline.locator("li.event-agent").wait_for()
    assert "Agent Sam" in await timeline.inner_text() and "Hello, Sam here <b>now</b>." in await timeline.inner_text()
    stored = await store.events("waiting-4")
    assert (stored[-1]["type"], stored[-1]["text"], stored[-1]["agent"]) == (
        "agent",
        "Hello, Sam here <b>now</b>.",
        "Sam",
    )

    await page.get_by_role("button", name="Give back to the bot").click()
    await page.get_by_role("status").filter(has_text="The bot has the conversation again.").wait_for()
    await page.get_by_role("status").filter(has_text="Nobody is waiting for a person.").wait_for()
    assert (await store.events("waiting-4"))[-1]["type"] == "resume"
    assert await page.locator("main img, main b").count() == 0
    await _clean(page, errors)


REVIEWED = """preferences:
  - id: r1
    rating: up
    turns:
      - user: Where is ES-1001?
      - action: check_order
        args: {order_id: ES-1001}
        result: {status: shipped}
      - bot: ES-1001 has shipped.
  - id: r2
    rejected: No idea.
    turns:
      - user: has my parcel left
      - bot: I can check that. What's your order number?
"""
WAITING = """preferences:
  - id: w1
    draft: true
    rating: down
    turns:
      - user: hi
      - bot: "<b>go away</b>"
"""


async def test_the_preferences_panel_counts_rated_replies_pairs_and_reviews(browser, console):
    server, project = console
    folder = project / "training_data" / "preferences"
    folder.mkdir()
    (folder / "reviewed.yml").write_text(REVIEWED)
    (folder / "waiting.yml").write_text(WAITING)
    (folder / "broken.yml").write_text(WAITING.replace("rating: down", "rating: meh"))
    page, errors = await _page(browser, server)
    await _sign_in(page)
    await page.get_by_role("navigation", name="Panels").get_by_role("button", name="Preferences").click()
    await page.get_by_role("status").filter(has_text="3 file(s)").wait_for()
    totals = await page.get_by_role("list", name="Preference data counts").inner_text()
    for line in ("1 rated up", "1 rated down", "1 agents' replies", "2 reviewed", "1 waiting for review"):
        assert line in totals, totals
    files = page.get_by_role("list", name="Preference files")
    assert "2 row(s) reviewed" in await files.locator("li").filter(has_text="reviewed").inner_text()
    broken = await files.locator("li").filter(has_text="broken").inner_text()
    assert "1 problem(s)" in broken and "training_data/preferences/broken.yml:4:" in broken
    assert await page.locator("main b").count() == 0  # the reply's markup stays text
    await _clean(page, errors)
