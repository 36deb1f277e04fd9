"""`bot data export` (filters), `bot data review` (scripted keys, $EDITOR a script) and
`bot conversations redact ID` (in place, on SQLite, PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest
from draft_support import PERSONAL, golden_events, handed_off_events, rate, starter_project, store_conversation
from store_isolation import REDIS_URL, postgres_schema, redis_prefix

from bot.cli import main
from bot.config import load_settings
from bot.conversations.events import bot_message, user_message
from bot.conversations.store import SQLiteStore
from bot.pipelines import drafts

OLD = 1_600_000_000.0  # 2020-09-13


@pytest.fixture
def project(tmp_path, cache_dir):
    return starter_project(tmp_path / "bot", cache_dir)


def short(text: str, at: float | None = None) -> list[dict]:
    events = [user_message(text), bot_message("I can help with that.")]
    return [dict(e, timestamp=at) for e in events] if at else events


def seed(project, conversations: dict[str, list[dict]], ratings: dict[str, tuple[int, str]] | None = None) -> None:
    ratings = ratings or {}

    async def go():
        store = SQLiteStore(project / "conversations.sqlite3")  # endpoints.yml's default store
        try:
            for sender, events in conversations.items():
                stored = await store_conversation(store, sender, events)
                if sender in ratings:
                    index, vote = ratings[sender]
                    await store.append(sender, rate(stored, index, vote))
        finally:
            await store.close()

    asyncio.run(go())


def drafted(project) -> set[str]:
    return {d.source for d in drafts.list_drafts(load_settings(project))}


def test_export_filters_pick_the_right_conversations(project, capsys):
    seed(
        project,
        {
            "rated-down": golden_events(),
            "handed-off": handed_off_events(),
            "old": short("How do I top up?", OLD),
            "rated-up": short("Is roaming free in France?"),
        },
        {"rated-down": (9, "down"), "rated-up": (1, "up")},
    )
    assert main(["-C", str(project), "data", "export", "--rated", "down"]) == 0
    out = capsys.readouterr().out
    assert drafted(project) == {"rated-down"}
    assert (
        "wrote training_data/drafts/conversation-rated-down.yml (valid); "
        "redacted: 2 email addresses, 1 card number, 1 phone number" in out
    )

    assert main(["-C", str(project), "data", "export", "--handed-off"]) == 0
    assert drafted(project) == {"rated-down", "handed-off"}
    assert "1 draft written" in capsys.readouterr().out

    assert main(["-C", str(project), "data", "export", "--since", "2021-01-01"]) == 0
    out = capsys.readouterr().out
    assert drafted(project) == {"rated-down", "handed-off", "rated-up"}
    assert "skipped rated-down: already drafted: draft 'conversation-rated-down'" in out

    assert main(["-C", str(project), "data", "export", "--conversation", "old", "--rated", "down"]) == 0
    assert "skipped old: it does not match the other filters" in capsys.readouterr().out
    assert main(["-C", str(project), "data", "export", "--conversation", "old"]) == 0
    assert drafted(project) == {"rated-down", "handed-off", "rated-up", "old"}
    for text in (d.text for d in drafts.list_drafts(load_settings(project))):
        for value in PERSONAL:
            assert value not in text


def test_export_errors_are_clear(project, capsys):
    seed(project, {})
    assert main(["-C", str(project), "data", "export", "--since", "last week"]) == 1
    assert "error: --since takes a date as YYYY-MM-DD (UTC), not 'last week'" in capsys.readouterr().err
    assert main(["-C", str(project), "data", "export", "--conversation", "nobody"]) == 1
    assert "error: no stored conversation 'nobody'" in capsys.readouterr().err
    assert main(["-C", str(project), "data", "export"]) == 0
    assert "no stored conversation matches" in capsys.readouterr().out


FIXER = """import pathlib, sys
path = pathlib.Path(sys.argv[1])
path.write_text(path.read_text().replace("chek_order", "check_order"))
"""


def write_draft(project, name: str, text: str) -> None:
    folder = project / "training_data" / "drafts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yml").write_text(text)


def test_review_accepts_edits_rejects_and_refuses_with_the_reason(project, tmp_path, monkeypatch, capsys):
    settings = load_settings(project)
    training = next(d for d in drafts._project(settings)[1] if not d.held_out)
    lines = ["dialogues:", "  - id: copied", "    draft: true", "    turns:"]
    user_turns = [t for t in training.turns if type(t).__name__ == "UserTurn"]
    lines += [f"      - user: {drafts.scalar(t.user)}\n      - bot: Noted." for t in user_turns]
    write_draft(project, "a-copied", "\n".join(lines) + "\n")
    write_draft(
        project,
        "b-typo",
        "dialogues:\n  - id: b-typo\n    draft: true\n    turns:\n      - user: Where is KM-100001?\n"
        "      - action: chek_order\n        args: {order_id: KM-100001}\n        result: {status: shipped}\n"
        "      - bot: It has shipped.\n",
    )
    write_draft(
        project,
        "c-unwanted",
        "dialogues:\n  - id: c-unwanted\n    draft: true\n    turns:\n      - user: hi\n      - bot: Hello!\n",
    )
    fixer = tmp_path / "fixer.py"
    fixer.write_text(FIXER)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {fixer}")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("t\na\ns\nx\na\ne\na\nr\n"))

    assert main(["-C", str(project), "data", "review"]) == 0
    out = capsys.readouterr().out
    assert f"refused: a training conversation can't go into the tests: it is already dialogue '{training.id}'" in out
    assert f"refused: duplicate of dialogue '{training.id}'" in out and "the same customer messages" in out
    assert "'x'? choose one of: a) accept into dialogues" in out
    assert (
        "refused: the draft is not valid: training_data/drafts/b-typo.yml:6:17: error: unknown action 'chek_order'"
        in out
    )
    # shown again after the edit
    assert "   6 |       - action: chek_order" in out and "   6 |       - action: check_order" in out
    assert "accepted into training_data/dialogues/b-typo.yml" in out
    assert "rejected: c-unwanted deleted" in out
    assert "accepted 1 into dialogues and 0 into tests, rejected 1, skipped 1; 1 draft left" in out
    assert "check_order" in (project / "training_data" / "dialogues" / "b-typo.yml").read_text()
    assert drafts.draft_names(settings) == ["a-copied"]
    assert main(["-C", str(project), "data", "validate"]) == 0

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # end of input: quit
    assert main(["-C", str(project), "data", "review"]) == 0
    assert "0 into tests, rejected 0, skipped 0; 1 draft left" in capsys.readouterr().out


def test_review_with_no_drafts_says_so(project, capsys):
    assert main(["-C", str(project), "data", "review"]) == 0
    assert "no drafts to review" in capsys.readouterr().out


def assert_redacted(before: list[dict], after: list[dict]) -> None:
    kept_after = [(e["seq"], e["type"], e["timestamp"]) for e in after]
    kept_before = [(e["seq"], e["type"], e["timestamp"]) for e in before]
    assert kept_after == kept_before
    text = repr(after)
    for value in PERSONAL:
        assert value not in text, value
    verify = next(e for e in after if e["type"] == "action")
    assert verify["arguments"]["account_id"] in after[2]["text"] and verify["name"] == "verify_customer"
    slot = next(e for e in after if e["type"] == "slot")
    assert slot["name"] == "first_name" and slot["value"] == verify["result"]["first_name"]
    assert after[-1] == before[-1]  # the rating: nothing personal in it


def test_redact_in_place_on_sqlite(project, capsys):
    seed(
        project,
        {"web-golden": golden_events(), "other": short("my email is keep@me.test")},
        {"web-golden": (9, "down")},
    )

    async def events(sender):
        store = SQLiteStore(project / "conversations.sqlite3")
        try:
            return await store.events(sender)
        finally:
            await store.close()

    before = asyncio.run(events("web-golden"))
    assert main(["-C", str(project), "conversations", "redact", "web-golden"]) == 0
    assert capsys.readouterr().out.strip() == (
        "redacted conversation web-golden in place: 2 email addresses, 1 card number, 1 phone number, 1 postcode, "
        "1 account number, 2 order or reference numbers, 2 names"
    )
    assert_redacted(before, asyncio.run(events("web-golden")))
    assert asyncio.run(events("other"))[0]["text"] == "my email is keep@me.test"  # another conversation: untouched
    assert main(["-C", str(project), "conversations", "redact", "nobody"]) == 1
    assert "error: no stored conversation 'nobody'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
async def test_redact_in_place_on_the_shared_stores(kind, project):
    settings = load_settings(project)
    if kind == "postgresql":
        from bot.conversations.store_postgres import PostgresStore

        async with postgres_schema() as (url, _):
            store = await PostgresStore.connect(url)
            try:
                await _redact_golden(store, settings)
            finally:
                await store.close()
        return
    from bot.conversations.store_redis import RedisStore

    async with redis_prefix() as (_, prefix):
        store = await RedisStore.connect(REDIS_URL, prefix=prefix)
        try:
            await _redact_golden(store, settings)
        finally:
            await store.close()


async def _redact_golden(store, settings) -> None:
    stored = await store_conversation(store, "web-golden", golden_events())
    await store.append("web-golden", rate(stored, 9, "down"))
    before = await store.events("web-golden")
    summary = await drafts.redact_conversation(store, settings, "web-golden")
    assert summary["email"] == 2 and summary["card"] == 1 and summary["name"] == 2
    assert_redacted(before, await store.events("web-golden"))
    with pytest.raises(drafts.UnknownConversation):
        await drafts.redact_conversation(store, settings, "nobody")
