"""Dialogue drafts: stored conversations turned into training data a person reviews.

A draft is a YAML file under `training_data/drafts/` in the format of `training_data/dialogues/`,
its dialogue marked `draft: true` and carrying the `source` conversation id. It is made from the
conversation's events (bot/pipelines/draft_turns.py) after redaction (bot/data/redaction.py), so no
personal data is ever written. Drafts are never trained on: `bot data validate` and
`bot data compile` read only dialogues/ and tests/. A person then

- validates it (`validate_draft`: the project's checks, with line numbers in the draft's text),
- accepts it into dialogues/ or tests/ (`accept`: `draft: true` and the review comments removed),
  which is refused, with the reason, when it is invalid, duplicates a dialogue, or would put a
  training conversation into the held-out tests (or a test conversation into training),
- or rejects it (`reject`: the file is deleted).

`bot data export`, `bot data review` and the drafts admin API (bot/serve/routes/drafts.py) are
thin layers over these functions."""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bot.config import Settings
from bot.conversations.events import SLOT, USER, Event
from bot.conversations.search import ConversationFilter, find_conversations, matches
from bot.conversations.search import describe as describe_conversation
from bot.conversations.store import ConversationStore, ConversationSummary
from bot.data.checks import check
from bot.data.loader import dialogues_in, display_path, read_training_data, yaml_files
from bot.data.project import LazyTokenizer
from bot.data.redaction import Redactor, describe
from bot.data.schema import ActionTurn, BotTurn, Dialogue, HandoffTurn, TrainingData, UserTurn
from bot.errors import BotError, InvalidFiles, Problem
from bot.pipelines.augment import AUGMENTED_SOURCE
from bot.pipelines.augment import HEADER_MARK as AUGMENTED_HEADER
from bot.pipelines.draft_turns import DraftTurn, conversation_turns
from bot.pipelines.draft_yaml import scalar, turn_lines
from bot.yamlsource import load_bytes

DRAFTS = "drafts"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
Into = Literal["dialogues", "tests"]
HEADER_MARK = "# Draft of conversation"
EVERY_CONVERSATION = ConversationFilter()  # the default filter: no condition


class DraftNotFound(BotError):
    """No draft of that name under training_data/drafts/."""


class DraftRefused(BotError):
    """A draft can't be accepted: it is invalid, a duplicate, or a leak between training and tests."""


class UnknownConversation(BotError):
    """No stored conversation has that id."""


class NothingToDraft(BotError):
    """The conversation has no exchange to learn from (no customer message answered)."""


@dataclass(frozen=True)
class DraftInfo:
    name: str
    path: Path
    text: str
    problems: list[Problem]
    source: str | None

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class NewDraft(DraftInfo):
    redacted: dict[str, int] = field(default_factory=dict)  # different values replaced, per kind


# -- where drafts live ------------------------------------------------------------------------------


def drafts_dir(settings: Settings) -> Path:
    return settings.data_dir / DRAFTS


def _display(settings: Settings, path: Path) -> str:
    return display_path(path, settings.root)


def draft_path(settings: Settings, name: str) -> Path:
    """The draft's file; DraftNotFound if there is none (or the name could not be one)."""
    path = drafts_dir(settings) / f"{name}.yml"
    if not NAME.fullmatch(name) or not path.is_file():
        raise DraftNotFound(f"no draft named '{name}' in {_display(settings, drafts_dir(settings))}/")
    return path


def draft_names(settings: Settings) -> list[str]:
    folder = drafts_dir(settings)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yml") if p.is_file() and NAME.fullmatch(p.stem))


def source_of(settings: Settings, sender: str) -> str:
    """The conversation id as a draft keeps it: as it is, unless the id itself holds personal data
    (a channel that uses the customer's email address or phone number as the id): then a digest
    of it, the same for the same id, so a second draft of it is still recognised."""
    if Redactor(settings.build.redaction).text(sender) == sender:
        return sender
    return "sha256-" + hashlib.sha256(sender.encode("utf-8", errors="surrogateescape")).hexdigest()[:20]


def safe_name(sender: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", sender).strip(".-_")[:100] or "conversation"


def _free_name(settings: Settings, sender: str) -> str:
    base = f"conversation-{safe_name(sender)}"
    taken = set(draft_names(settings)) | {d.id for d in _project(settings)[1]}
    taken |= {p.stem for folder in ("dialogues", "tests") for p in (settings.data_dir / folder).glob("*.yml")}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


# -- validation ---------------------------------------------------------------------------------------

_read_cache: dict[Path, tuple[tuple, TrainingData | None]] = {}


def _project(settings: Settings) -> tuple[TrainingData | None, list[Dialogue]]:
    """The project's data as it is (whatever problems it has): its actions and dialogues. Read
    again only when one of its files changed (reading is the slow part of checking a draft)."""
    folder = settings.data_dir
    files = [
        folder / "persona.yml",
        folder / "actions.yml",
        *yaml_files(folder / "dialogues"),
        *yaml_files(folder / "tests"),
    ]
    stamp = tuple((str(f), st.st_mtime_ns, st.st_size) for f in files if f.is_file() and (st := f.stat()))
    cached = _read_cache.get(folder)
    if cached is None or cached[0] != stamp:
        data, _ = read_training_data(folder, settings.root)
        if len(_read_cache) >= 8:
            _read_cache.clear()
        _read_cache[folder] = cached = (stamp, data)
    data = cached[1]
    return data, list(data.dialogues) if data else []


def _read_dialogues(text: str, display: str, held_out: bool = False) -> tuple[list[Dialogue], list[Problem]]:
    """The dialogues of a draft's text as read, with the problems of reading it (no validation)."""
    try:
        doc = load_bytes(text.encode("utf-8", errors="surrogateescape"), display)
    except InvalidFiles as e:
        return [], e.problems
    return dialogues_in(doc, held_out)


def parse_draft(
    settings: Settings, text: str, display: str, *, held_out: bool = False
) -> tuple[list[Dialogue], list[Problem]]:
    """The dialogues of a draft's text and every problem the validator finds in them, located in
    the text; a dialogue id already used in dialogues/ or tests/ is a problem too."""
    dialogues, problems = _read_dialogues(text, display, held_out)
    if not dialogues and problems:  # it could not be read: nothing to validate
        return [], sorted(problems)
    data, existing = _project(settings)
    if data is not None:
        draft_data = TrainingData(data.persona, data.actions, tuple(dialogues))
        problems += check(
            draft_data, max_length=settings.build.model.max_length, count_tokens=LazyTokenizer(settings).count
        )
    used = {d.id: d for d in existing}
    for d in dialogues:
        if first := used.get(d.id):
            line, col = first.doc.where(first.loc + ("id",))
            problems.append(
                d.problem(
                    "id",
                    message=f"dialogue id '{d.id}' is already used at {first.doc.path}:{line}:{col}: choose another",
                )
            )
    if not dialogues and not problems:
        problems.append(Problem(display, 1, 1, "no dialogue in the draft (a 'dialogues' list with one dialogue)"))
    return dialogues, sorted(problems)


def _source_of(text: str, dialogues: list[Dialogue]) -> str | None:
    if dialogues:
        return dialogues[0].source or None
    found = re.search(r"^\s*source:\s*(\S+)\s*$", text, re.M)
    return found.group(1).strip("'\"") if found else None


def read_draft(settings: Settings, name: str) -> DraftInfo:
    path = draft_path(settings, name)
    text = path.read_bytes().decode("utf-8", errors="replace")
    dialogues, problems = parse_draft(settings, text, _display(settings, path))
    return DraftInfo(name, path, text, problems, _source_of(text, dialogues))


def list_drafts(settings: Settings) -> list[DraftInfo]:
    return [read_draft(settings, name) for name in draft_names(settings)]


def save_draft(settings: Settings, name: str, text: str) -> DraftInfo:
    """Replace a draft's text (kept even if invalid: a person is editing it); its new state."""
    draft_path(settings, name).write_text(text, encoding="utf-8")
    return read_draft(settings, name)


# -- making drafts ----------------------------------------------------------------------------------


def turns_redactor(settings: Settings, turns: list[DraftTurn], rng: random.Random | None = None) -> Redactor:
    """The redactor of one conversation: it has learnt the names its customer gave and its
    actions returned, so every text of it gets the same placeholders."""
    redactor = Redactor(settings.build.redaction, rng)
    redactor.learn_names(
        [t.turn["user"] for t in turns if t.kind == "user"],
        [v for t in turns if t.kind == "action" for v in (t.turn.get("args"), t.turn.get("result"))],
    )
    return redactor


def redact_turns(redactor: Redactor, turns: list[DraftTurn]) -> list[str | None]:
    """Redact the turns in place; their review notes, redacted too (a failure's error may quote data)."""
    for t in turns:
        if t.kind == "action":
            t.turn["args"] = redactor.value(t.turn.get("args") or {})
            t.turn["result"] = redactor.value(t.turn.get("result"))
        else:
            t.turn[t.kind] = redactor.text(t.turn[t.kind])
    return ["; ".join(redactor.text(n) for n in t.notes) or None for t in turns]


def draft_text(
    source: str, events: list[Event], settings: Settings, *, name: str, rng: random.Random | None = None
) -> tuple[str, dict[str, int]]:
    """The YAML of a redacted draft of this conversation, and what redaction replaced."""
    found = conversation_turns(events)
    if not any(t.kind == "user" for t in found.turns):
        raise NothingToDraft(f"conversation '{source}' has no customer message with an answer: nothing to draft")
    redactor = turns_redactor(settings, found.turns, rng)
    notes = redact_turns(redactor, found.turns)
    summary = redactor.summary()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    header = [
        f"{HEADER_MARK} {source}, drafted on {day}.",
        f"# Personal data was replaced by placeholders: {describe(summary)}.",
        "# Look at every line marked REVIEW, then accept or reject it with `bot data review` (or the console);",
        "# until then it is never trained on.",
    ]
    header += [f"# Left out: {what}." for what in found.left_out]
    description = "Drafted from a stored conversation."
    if found.by_agent:
        description += " A person took it over: their messages are the bot's turns here."
    elif found.handed_off:
        description += " The customer was handed to a person."
    lines = header + [
        "dialogues:",
        f"  - id: {name}",
        "    draft: true",
        f"    source: {scalar(source)}",
        f"    description: {scalar(description)}",
        "    tags: []",
        "    turns:",
    ]
    for t, note in zip(found.turns, notes, strict=True):
        lines += turn_lines(t.turn, note)
    return "\n".join(lines) + "\n", summary


def write_draft(settings: Settings, sender: str, events: list[Event], *, rng: random.Random | None = None) -> NewDraft:
    """A new redacted draft of a conversation under training_data/drafts/ (never overwriting one)."""
    source = source_of(settings, sender)
    name = _free_name(settings, source)
    text, summary = draft_text(source, events, settings, name=name, rng=rng)
    folder = drafts_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(text, encoding="utf-8")
    dialogues, problems = parse_draft(settings, text, _display(settings, path))
    return NewDraft(name, path, text, problems, source, summary)


async def draft_conversation(
    store: ConversationStore, settings: Settings, sender: str, *, rng: random.Random | None = None
) -> NewDraft:
    events = await store.events(sender)
    if not events:
        raise UnknownConversation(f"no stored conversation '{sender}'")
    return write_draft(settings, sender, events, rng=rng)


@dataclass(frozen=True)
class Skipped:
    sender: str
    reason: str


def drafted_sources(settings: Settings) -> dict[str, str]:
    """{conversation id: where it already is} over drafts/, dialogues/ and tests/ (a rewrite of a
    training dialogue by `bot data augment` comes from no conversation)."""
    project = _project(settings)[1]
    where = {
        d.source: f"{d.doc.path} ('{d.id}')" for d in project if d.source and not d.source.startswith(AUGMENTED_SOURCE)
    }
    for name in draft_names(settings):  # only the source is needed: read, not validated
        path = draft_path(settings, name)
        text = path.read_bytes().decode("utf-8", errors="replace")
        if source := _source_of(text, _read_dialogues(text, _display(settings, path))[0]):
            where.setdefault(source, f"draft '{name}'")
    return where


async def export(
    store: ConversationStore,
    settings: Settings,
    wanted: ConversationFilter = EVERY_CONVERSATION,
    *,
    conversation: str | None = None,
    rng: random.Random | None = None,
) -> list[NewDraft | Skipped]:
    """Drafts of the conversations that match (or of one conversation, if it matches): a
    conversation already drafted or accepted is skipped, unless it is the one asked for by id."""
    if conversation is not None:
        events = await store.events(conversation)
        if not events:
            raise UnknownConversation(f"no stored conversation '{conversation}'")
        summary = ConversationSummary(conversation, events[0]["timestamp"], events[-1]["timestamp"], len(events))
        if not matches(describe_conversation(summary, events), events, wanted):
            return [Skipped(conversation, "it does not match the other filters")]
        return [write_draft(settings, conversation, events, rng=rng)]
    done = drafted_sources(settings)
    out: list[NewDraft | Skipped] = []
    for found in await find_conversations(store, wanted):
        if (source := source_of(settings, found.sender)) in done:
            out.append(Skipped(found.sender, f"already drafted: {done[source]}"))
            continue
        try:
            out.append(write_draft(settings, found.sender, await store.events(found.sender), rng=rng))
        except NothingToDraft as e:
            out.append(Skipped(found.sender, str(e)))
    return out


# -- accepting and rejecting ------------------------------------------------------------------------


def _plain(text: str) -> str:
    return " ".join(text.split()).casefold()


def _turn_key(turn) -> tuple:
    if isinstance(turn, UserTurn):
        return ("user", _plain(turn.user))
    if isinstance(turn, BotTurn):
        return ("bot", _plain(turn.bot))
    if isinstance(turn, HandoffTurn):
        return ("handoff", _plain(turn.handoff))
    assert isinstance(turn, ActionTurn)
    return ("action", turn.action, repr(turn.args), repr(turn.result))


def _customer_side(d: Dialogue) -> tuple:
    return tuple(_plain(t.user) for t in d.turns if isinstance(t, UserTurn))


def _where(d: Dialogue) -> str:
    line, _ = d.doc.where(d.loc + ("id",))
    return f"dialogue '{d.id}' ({d.doc.path}:{line})"


def _refusal(draft: Dialogue, existing: list[Dialogue], into: Into) -> str | None:
    if into == "tests" and draft.source.startswith(AUGMENTED_SOURCE):
        return (
            f"'{draft.id}' rewrites the training dialogue '{draft.source.removeprefix(AUGMENTED_SOURCE)}': "
            "it can't go into the tests, which would then measure memory"
        )
    turns = tuple(_turn_key(t) for t in draft.turns)
    for e in existing:
        same_turns = turns == tuple(_turn_key(t) for t in e.turns)
        same_source = bool(draft.source) and draft.source == e.source
        if not (same_turns or same_source or _customer_side(draft) == _customer_side(e)):
            continue
        if into == "tests" and not e.held_out:
            return (
                f"a training conversation can't go into the tests: it is already {_where(e)}, "
                "and a test the model trained on measures nothing"
            )
        if into == "dialogues" and e.held_out:
            return (
                f"a held-out test conversation can't go into training: it is {_where(e)}, "
                "and the evaluation would then measure memory"
            )
        if same_turns:
            why = "the same turns"
        elif same_source:
            why = "the same conversation"
        else:
            why = "the same customer messages"
        return f"duplicate of {_where(e)}: {why}"
    return None


_REVIEW_COMMENT = re.compile(r"\s+# REVIEW:")
_DRAFT_LINE = re.compile(r"^\s*draft:\s*true\s*(#.*)?$")


def _balanced_quotes(prefix: str) -> bool:
    return prefix.replace('\\"', "").count('"') % 2 == 0


def undrafted(text: str, headers: tuple[str, ...] = (HEADER_MARK, AUGMENTED_HEADER)) -> str:
    """A draft's text as training data: without `draft: true`, the draft's header comment (that
    starts with one of `headers`) and the REVIEW comments (a person has reviewed it)."""
    lines = text.splitlines()
    if lines and lines[0].startswith(headers):
        while lines and lines[0].startswith("#"):
            lines.pop(0)
    out = []
    for line in lines:
        if _DRAFT_LINE.match(line):
            continue
        for m in _REVIEW_COMMENT.finditer(line):  # the first one outside a quoted text
            if _balanced_quotes(line[: m.start()]):
                line = line[: m.start()]
                break
        out.append(line)
    return "\n".join(out) + "\n"


def _content(d: Dialogue) -> tuple:
    """What a dialogue says, whatever its draft mark and place in a file."""
    return (d.id, d.tags, d.turns, d.expect, d.source)


def _same(a: list[Dialogue], b: list[Dialogue]) -> bool:
    return [_content(d) for d in a] == [_content(d) for d in b]


def accept(settings: Settings, name: str, into: Into) -> Path:
    """Move a valid draft into dialogues/ or tests/ as reviewed data; DraftRefused with the reason otherwise."""
    if into not in ("dialogues", "tests"):
        raise DraftRefused(f"accept into 'dialogues' or 'tests', not '{into}'")
    path = draft_path(settings, name)
    text = path.read_text(encoding="utf-8")
    display = _display(settings, path)
    dialogues, problems = parse_draft(settings, text, display, held_out=into == "tests")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DraftRefused(f"the draft is not valid: {problems[0]}{more}")
    existing = _project(settings)[1]
    for d in dialogues:
        if reason := _refusal(d, existing, into):
            raise DraftRefused(reason)
    target = settings.data_dir / into / f"{name}.yml"
    if target.exists():
        raise DraftRefused(f"{_display(settings, target)} already exists: rename the draft's file or reject it")
    final = undrafted(text)
    reviewed, problems = parse_draft(settings, final, display, held_out=into == "tests")
    if problems or not _same(reviewed, dialogues):  # the comments could not be taken out safely: only the draft mark
        final = "\n".join(line for line in text.splitlines() if not _DRAFT_LINE.match(line)) + "\n"
        reviewed, problems = parse_draft(settings, final, display, held_out=into == "tests")
        if problems or not _same(reviewed, dialogues):
            raise DraftRefused(
                "the draft's 'draft: true' line could not be removed: remove it by hand, then accept it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(final, encoding="utf-8")
    path.unlink()
    return target


def reject(settings: Settings, name: str) -> None:
    draft_path(settings, name).unlink()


# -- a customer's data-protection request -------------------------------------------------------------

KEPT_FIELDS = {
    "type",
    "timestamp",
    "seq",
    "by",
    "name",
    "rating",
    "rated_seq",
    "kind",
    "encoding",
    "where",
    "status",
    "agent",
    "action",
    "of",
}


def _redacted_field(redactor: Redactor, name: str, value, slot: str | None):
    """A kept field as it is; a slot's value redacted as the slot's name says, any other field
    as its own name says."""
    if name in KEPT_FIELDS:
        return value
    return redactor.value(value, slot if name == "value" else name)


async def redact_conversation(
    store: ConversationStore, settings: Settings, sender: str, *, rng: random.Random | None = None
) -> dict[str, int]:
    """Redact one stored conversation in place (under its lock): every text and value of its
    events, with the same placeholders throughout; what was replaced, per kind."""
    async with store.lock(sender, settings.build.serve.lock_timeout_s):
        events = await store.events(sender)
        if not events:
            raise UnknownConversation(f"no stored conversation '{sender}'")
        redactor = Redactor(settings.build.redaction, rng)
        customer_texts = [e.get("text") or "" for e in events if e["type"] == USER]
        field_values = [v for e in events for k, v in e.items() if k not in KEPT_FIELDS]
        slot_values = [{e["name"]: e.get("value")} for e in events if e["type"] == SLOT and "name" in e]
        redactor.learn_names(customer_texts, field_values + slot_values)
        redacted = []
        for event in events:
            slot = event.get("name") if event["type"] == SLOT else None
            redacted.append({k: _redacted_field(redactor, k, v, slot) for k, v in event.items()})
        await store.rewrite(sender, redacted)
    return redactor.summary()
