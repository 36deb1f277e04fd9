"""Preference data from stored conversations (the file format is in bot/data/preferences.py).

From one conversation's events:
- each bot reply the customer rated (the latest vote counts) becomes a rated row: the
  conversation up to the reply, as the model saw it (actions and their results included), the
  reply, and `rating: up` or `down`;
- each agent takeover whose first message answers the customer's last message, which the bot
  had already answered, becomes a pair: the agent's reply (chosen, marked for review as drafts
  mark an agent's words) and the bot's (`rejected`).

Never used: text the leak guard cut, the apology after a failed action or a model that gave no
reply, the offer of a person the policy wrote, an action's own message, and the handoff
message. Everything is redacted as drafts are (bot/pipelines/drafts.py), with the same
placeholders across a conversation's rows, and written as a draft: `bot data review` accepts
(the `draft: true` marks go) or rejects (the file goes) it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import Settings
from bot.conversations.events import (
    ACTION_FAILED,
    ACTION_REJECTED,
    AGENT,
    BOT,
    GUARD,
    HANDOFF,
    MODEL_UNAVAILABLE,
    OFFER,
    RESUME,
    UNGROUNDED,
    USER,
    Event,
)
from bot.conversations.search import ConversationFilter, find_conversations, latest_ratings
from bot.conversations.store import ConversationStore
from bot.data.loader import display_path
from bot.data.preferences import PREFERENCES, Preference, check_preferences, preference_files, read_preference_text
from bot.data.project import LazyTokenizer
from bot.data.redaction import describe
from bot.errors import BotError, Problem
from bot.pipelines.draft_turns import DraftTurn, conversation_turns
from bot.pipelines.draft_yaml import scalar, turn_lines
from bot.pipelines.drafts import (
    NAME,
    Skipped,
    UnknownConversation,
    _project,
    redact_turns,
    safe_name,
    source_of,
    turns_redactor,
    undrafted,
)

HEADER = "# Preferences from conversation"
UNWRITTEN = (None, GUARD, OFFER, MODEL_UNAVAILABLE)  # `by` of bot messages that are not an action's own
AGENT_NOTE = "written by {} after taking the conversation over: check it is the reply the bot should have given"


class PreferenceFileNotFound(BotError):
    """No preference file of that name under training_data/preferences/."""


class PreferencesRefused(BotError):
    """A preference file can't be accepted: it is not valid."""


@dataclass
class PreferenceRow:
    seq: int  # the reply's event
    turns: list[DraftTurn]  # the context, then the reply
    rating: str | None = None
    rejected: str | None = None


def _failed(event: Event) -> bool:
    """An event after which the bot's next message is an apology."""
    kind = event.get("type")
    if kind == ACTION_REJECTED:
        return event.get("reason") != UNGROUNDED  # asking for a value the customer never gave is a real reply
    return kind in (ACTION_FAILED, MODEL_UNAVAILABLE)


def _model_reply(events: list[Event], at: int) -> bool:
    """Whether events[at] is a bot message the model wrote in answer to the customer (not the
    leak guard's refusal, the policy's offer, an action's message or an apology)."""
    event = events[at]
    if event.get("type") != BOT or event.get("by") is not None or not (event.get("text") or "").strip():
        return False
    for before in reversed(events[:at]):
        if before.get("type") in (USER, BOT, AGENT, HANDOFF, RESUME):
            return before.get("type") == USER or before.get("type") == BOT and before.get("by") not in UNWRITTEN
        if _failed(before):
            return False
    return False


def _context(events: list[Event], at: int) -> list[DraftTurn] | None:
    """The turns the step at events[at] answered (None if they don't end with the customer's
    message or an action's result, which a bot step must answer)."""
    turns = conversation_turns(events[:at], open_end=True).turns
    return turns if turns and turns[-1].kind in ("user", "action") else None


def _rated_rows(events: list[Event]) -> list[PreferenceRow]:
    where = {e.get("seq"): i for i, e in enumerate(events)}
    rows = []
    for seq, rating in sorted(latest_ratings(events).items()):
        at = where.get(seq)
        if at is None or not _model_reply(events, at) or rating.get("rating") not in ("up", "down"):
            continue
        if (context := _context(events, at)) is None:
            continue
        reply = DraftTurn({"bot": events[at]["text"]})
        rows.append(PreferenceRow(seq, [*context, reply], rating=rating["rating"]))
    return rows


def _pair_rows(events: list[Event]) -> list[PreferenceRow]:
    rows = []
    taken_over = False  # since the last resume
    for i, event in enumerate(events):
        kind = event.get("type")
        if kind == RESUME:
            taken_over = False
        if kind != AGENT or taken_over:
            continue
        taken_over = True  # only an agent's first message answers the bot's last reply
        user_at = max((j for j in range(i) if events[j].get("type") == USER), default=None)
        if user_at is None or not (event.get("text") or "").strip():
            continue
        between = range(user_at + 1, i)
        replies = [j for j in between if events[j].get("type") == BOT and _model_reply(events, j)]
        if not replies or any(events[j].get("type") == HANDOFF and events[j].get("by") != "agent" for j in between):
            continue  # the bot never answered that message, or it was handed over (no reply to reject)
        at = replies[-1]
        if (context := _context(events, at)) is None:
            continue
        who = f"agent {event['agent']}" if event.get("agent") else "an agent"
        chosen = DraftTurn({"bot": event["text"]}, [AGENT_NOTE.format(who)])
        rows.append(PreferenceRow(event.get("seq", i), [*context, chosen], rejected=events[at]["text"]))
    return rows


def preference_rows(events: list[Event]) -> list[PreferenceRow]:
    """The rated replies and the agents' better replies of one conversation, in its order."""
    return sorted(_rated_rows(events) + _pair_rows(events), key=lambda r: r.seq)


def preferences_text(
    source: str, events: list[Event], settings: Settings, *, name: str, rng: random.Random | None = None
) -> tuple[str, dict[str, int]] | None:
    """The YAML of a conversation's redacted preferences and what redaction replaced; None when
    it has none."""
    rows = preference_rows(events)
    if not rows:
        return None
    every_turn = [t for row in rows for t in row.turns]
    redactor = turns_redactor(settings, every_turn, rng)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    lines = []
    for row in rows:
        notes = redact_turns(redactor, row.turns)
        lines += [f"  - id: {name}-{row.seq}", "    draft: true", f"    source: {scalar(source)}"]
        if row.rating:
            lines.append(f"    rating: {row.rating}")
        else:
            lines.append(f"    rejected: {scalar(redactor.text(row.rejected or ''))}")
        lines.append("    turns:")
        for turn, note in zip(row.turns, notes, strict=True):
            lines += turn_lines(turn.turn, note)
    summary = redactor.summary()
    header = [
        f"{HEADER} {source}, drafted on {day}.",
        f"# Personal data was replaced by placeholders: {describe(summary)}.",
        "# Each preference's last turn is the reply it is about. Look at every line marked REVIEW, then",
        "# accept or reject the file with `bot data review`; until then it is never trained on.",
        "preferences:",
    ]
    return "\n".join(header + lines) + "\n", summary


# -- the files ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceFile:
    name: str
    path: Path
    text: str
    preferences: list[Preference]
    problems: list[Problem]
    redacted: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def draft(self) -> bool:
        return any(p.dialogue.draft for p in self.preferences) or not self.valid


def preferences_dir(settings: Settings) -> Path:
    return settings.data_dir / PREFERENCES


def preference_file_names(settings: Settings) -> list[str]:
    return [p.stem for p in preference_files(settings.data_dir) if NAME.fullmatch(p.stem)]


def preference_path(settings: Settings, name: str) -> Path:
    path = preferences_dir(settings) / f"{name}.yml"
    if not NAME.fullmatch(name) or not path.is_file():
        shown = display_path(preferences_dir(settings), settings.root)
        raise PreferenceFileNotFound(f"no preference file named '{name}' in {shown}/")
    return path


def parse_preferences(settings: Settings, text: str, display: str) -> tuple[list[Preference], list[Problem]]:
    """A preference file's preferences and every problem the checks of the dialogues find in them."""
    found, problems = read_preference_text(text, display)
    data = _project(settings)[0]
    if data is not None and found:
        tokenizer = LazyTokenizer(settings)
        problems += check_preferences(
            found, data, max_length=settings.build.model.max_length, count_tokens=tokenizer.count
        )
    if not found and not problems:
        problems.append(Problem(display, 1, 1, "no preference in the file (a 'preferences' list)"))
    return found, sorted(problems)


def read_preference_file(settings: Settings, name: str) -> PreferenceFile:
    path = preference_path(settings, name)
    text = path.read_bytes().decode("utf-8", errors="replace")
    found, problems = parse_preferences(settings, text, display_path(path, settings.root))
    return PreferenceFile(name, path, text, found, problems)


def _sources(settings: Settings) -> set[str]:
    sources = set()
    for name in preference_file_names(settings):
        text = preference_path(settings, name).read_bytes().decode("utf-8", errors="replace")
        found, _ = read_preference_text(text, name)
        sources |= {p.dialogue.source for p in found if p.dialogue.source}
    return sources


def write_preferences(
    settings: Settings, sender: str, events: list[Event], *, rng: random.Random | None = None
) -> PreferenceFile | None:
    """A conversation's preferences as a new file (never overwriting one); None if it has none."""
    source = source_of(settings, sender)
    base = f"conversation-{safe_name(source)}"
    taken = set(preference_file_names(settings))
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    made = preferences_text(source, events, settings, name=name, rng=rng)
    if made is None:
        return None
    text, summary = made
    folder = preferences_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(text, encoding="utf-8")
    found, problems = parse_preferences(settings, text, display_path(path, settings.root))
    return PreferenceFile(name, path, text, found, problems, summary)


async def export_preferences(
    store: ConversationStore,
    settings: Settings,
    wanted: ConversationFilter,
    *,
    conversation: str | None = None,
    rng: random.Random | None = None,
) -> list[PreferenceFile | Skipped]:
    """Preference files of the conversations that match (or of one conversation, written again
    even if it was before); a conversation with no rated reply and no takeover is skipped."""
    if conversation is not None:
        events = await store.events(conversation)
        if not events:
            raise UnknownConversation(f"no stored conversation '{conversation}'")
        senders = [conversation]
        done: set[str] = set()
    else:
        senders = [found.sender for found in await find_conversations(store, wanted)]
        done = _sources(settings)
    out: list[PreferenceFile | Skipped] = []
    for sender in senders:
        if source_of(settings, sender) in done:
            out.append(Skipped(sender, "its preferences are already in training_data/preferences/"))
            continue
        written = write_preferences(settings, sender, await store.events(sender), rng=rng)
        out.append(written or Skipped(sender, "no rated bot reply and no agent's reply in place of the bot's"))
    return out


# -- review -------------------------------------------------------------------------------------------


def accept_preferences(settings: Settings, name: str) -> Path:
    """Mark a valid preference file reviewed (its `draft: true` marks and REVIEW comments go);
    PreferencesRefused with the first problem otherwise."""
    info = read_preference_file(settings, name)
    if info.problems:
        more = f" (and {len(info.problems) - 1} more)" if len(info.problems) > 1 else ""
        raise PreferencesRefused(f"the preferences are not valid: {info.problems[0]}{more}")
    final = undrafted(info.text, headers=(HEADER,))
    display = display_path(info.path, settings.root)
    reviewed, problems = parse_preferences(settings, final, display)
    same = [(p.dialogue.turns, p.rating, p.rejected) for p in reviewed] == [
        (p.dialogue.turns, p.rating, p.rejected) for p in info.preferences
    ]
    if problems or not same or any(p.dialogue.draft for p in reviewed):
        raise PreferencesRefused("the 'draft: true' lines could not be removed: remove them by hand, then accept it")
    info.path.write_text(final, encoding="utf-8")
    return info.path


def reject_preferences(settings: Settings, name: str) -> None:
    preference_path(settings, name).unlink()


@dataclass(frozen=True)
class PreferenceCounts:
    """What training_data/preferences/ holds, for the console: rows of each kind, reviewed or
    waiting for review, and the files."""

    rated_up: int
    rated_down: int
    pairs: int
    reviewed: int
    waiting: int
    files: list[PreferenceFile]


def count_preferences(settings: Settings) -> PreferenceCounts:
    files = [read_preference_file(settings, name) for name in preference_file_names(settings)]
    rows = [p for f in files for p in f.preferences]
    return PreferenceCounts(
        rated_up=sum(p.rating == "up" for p in rows),
        rated_down=sum(p.rating == "down" for p in rows),
        pairs=sum(p.rejected is not None for p in rows),
        reviewed=sum(not p.dialogue.draft for p in rows),
        waiting=sum(p.dialogue.draft for p in rows),
        files=files,
    )
