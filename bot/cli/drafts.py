"""`bot data export | augment | review`: the terminal side of
bot/pipelines/drafts.py (which does the work and raises typed errors)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from bot.errors import BotError

EXPORT_HELP = """Stored conversations (the store of endpoints.yml) become YAML dialogue drafts under
training_data/drafts/, with personal data replaced by placeholders (config.yml `redaction:`).
A conversation already drafted or accepted is skipped, unless asked for with --conversation.
Drafts are never trained on until a person accepts them: see 'bot data review'."""

REVIEW_CHOICES = "a) accept into dialogues  t) accept into tests  e) edit in $EDITOR  r) reject  s) skip  q) quit"
PREFERENCE_CHOICES = "a) accept  e) edit in $EDITOR  r) reject  s) skip  q) quit"


class BadDate(BotError):
    """A command-line date that is not YYYY-MM-DD."""


def since_timestamp(text: str) -> float:
    """Midnight UTC at the start of a YYYY-MM-DD day."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadDate(f"--since takes a date as YYYY-MM-DD (UTC), not '{text}'") from None


async def with_store(settings, work):
    from bot.conversations.backends import open_store

    store = await open_store(settings)
    try:
        return await work(store)
    finally:
        await store.close()


def _shown(settings, path) -> str:
    """A path as the project knows it (training_data/...), whatever folder the command runs in."""
    from bot.data.loader import display_path

    return display_path(path, settings.root)


def _state(info) -> str:
    count = len(info.problems)
    return "valid" if not count else f"{count} problem{'s' if count != 1 else ''}: see 'bot data review'"


def cmd_export(args) -> int:
    from bot.config import load_settings
    from bot.conversations.search import ConversationFilter
    from bot.data.redaction import describe
    from bot.pipelines import drafts

    settings = load_settings(args.project)
    since = since_timestamp(args.since) if args.since else None
    wanted = ConversationFilter(since=since, handed_off=args.handed_off, rated=args.rated)

    def export_from(store):
        return drafts.export(store, settings, wanted, conversation=args.conversation)

    done = asyncio.run(with_store(settings, export_from))
    written = [d for d in done if isinstance(d, drafts.NewDraft)]
    for item in done:
        if isinstance(item, drafts.NewDraft):
            print(f"wrote {_shown(settings, item.path)} ({_state(item)}); redacted: {describe(item.redacted)}")
        else:
            print(f"skipped {item.sender}: {item.reason}")
    if not done:
        print("no stored conversation matches")
    elif written:
        print(f"{len(written)} draft{'s' if len(written) != 1 else ''} written: review with 'bot data review'")
    return 0


PREFERENCES_HELP = """Rated bot replies and agents' replies in place of the bot's, from stored
conversations (the store of endpoints.yml), become preference data under
training_data/preferences/, one file per conversation, with personal data replaced by
placeholders as in drafts. A conversation already there is skipped, unless asked for with
--conversation. Nothing is trained on until a person accepts it: see 'bot data review'."""


def cmd_preferences(args) -> int:
    from bot.config import load_settings
    from bot.conversations.search import ConversationFilter
    from bot.data.redaction import describe
    from bot.pipelines import preferences

    settings = load_settings(args.project)
    since = since_timestamp(args.since) if args.since else None

    def export_from(store):
        wanted = ConversationFilter(since=since)
        return preferences.export_preferences(store, settings, wanted, conversation=args.conversation)

    done = asyncio.run(with_store(settings, export_from))
    written = [d for d in done if isinstance(d, preferences.PreferenceFile)]
    for item in done:
        if isinstance(item, preferences.PreferenceFile):
            count = len(item.preferences)
            print(
                f"wrote {_shown(settings, item.path)}: {count} preference{'s' if count != 1 else ''} "
                f"({_state(item)}); redacted: {describe(item.redacted)}"
            )
        else:
            print(f"skipped {item.sender}: {item.reason}")
    if not done:
        print("no stored conversation matches")
    elif written:
        print(f"{len(written)} file{'s' if len(written) != 1 else ''} written: review with 'bot data review'")
    return 0


def _show(info, index: int, total: int, what: str = "draft") -> None:
    print(f"\n=== {what} {index} of {total}: {info.name} ===")
    for number, line in enumerate(info.text.splitlines(), start=1):
        print(f"{number:4} | {line}")
    if info.valid:
        print("valid: it passes 'bot data validate'")
    else:
        for problem in info.problems:
            print(problem)


def _edit(path) -> None:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        print("set $EDITOR (or $VISUAL) to edit drafts, e.g. EDITOR=nano")
        return
    try:
        subprocess.run([*shlex.split(editor), str(path)], check=False)
    except OSError as e:
        print(f"could not start the editor '{editor}': {e}")


def cmd_review(args) -> int:
    from bot.config import load_settings
    from bot.pipelines import drafts, preferences

    settings = load_settings(args.project)
    names = drafts.draft_names(settings)
    waiting = [
        n for n in preferences.preference_file_names(settings) if preferences.read_preference_file(settings, n).draft
    ]
    if not names and not waiting:
        print(
            "no drafts to review, and no preference data: 'bot data export' makes drafts from stored conversations, "
            "'bot data preferences' preference data"
        )
        return 0
    counts = {"dialogues": 0, "tests": 0, "preferences": 0, "rejected": 0, "skipped": 0}
    total = len(names) + len(waiting)
    for index, name in enumerate(names, start=1):
        if _review_draft(settings, name, index, total, counts) == "quit":
            return _summary(counts, settings)
    for index, name in enumerate(waiting, start=len(names) + 1):
        if _review_preferences(settings, name, index, total, counts) == "quit":
            break
    return _summary(counts, settings)


def _choice() -> str:
    try:
        return input("> ").strip().lower()
    except EOFError:
        return "q"


@dataclass(frozen=True)
class _Reviewed:
    """One file under review: how to read it, accept it (`accepts`: a choice's key -> a function
    giving what to say and the count it adds to) and reject it."""

    name: str
    what: str  # "draft" or "preferences"
    choices: str
    read: Callable
    accepts: dict[str, Callable[[], tuple[str, str]]]
    reject: Callable[[], None]


def _review(item: _Reviewed, index: int, total: int, counts: dict) -> str | None:
    """Show the file and ask until a choice settles it; "quit" when the person quits."""
    from bot.pipelines import drafts, preferences

    while True:
        info = item.read()
        _show(info, index, total, what=item.what)
        print(item.choices)
        choice = _choice()
        if choice in item.accepts:
            try:
                said, counted = item.accepts[choice]()
            except (drafts.DraftRefused, preferences.PreferencesRefused) as e:
                print(f"refused: {e}")
                continue
            print(said)
            counts[counted] += 1
        elif choice == "e":
            _edit(info.path)
            continue
        elif choice == "r":
            item.reject()
            print(f"rejected: {item.name} deleted")
            counts["rejected"] += 1
        elif choice == "s":
            counts["skipped"] += 1
        elif choice == "q":
            return "quit"
        else:
            print(f"'{choice}'? choose one of: {item.choices}")
            continue
        return None


def _review_draft(settings, name: str, index: int, total: int, counts: dict) -> str | None:
    from bot.pipelines import drafts

    def accept(into: str) -> tuple[str, str]:
        return f"accepted into {_shown(settings, drafts.accept(settings, name, into))}", into

    accepts = {"a": lambda: accept("dialogues"), "t": lambda: accept("tests")}
    reject = partial(drafts.reject, settings, name)
    item = _Reviewed(name, "draft", REVIEW_CHOICES, partial(drafts.read_draft, settings, name), accepts, reject)
    return _review(item, index, total, counts)


def _review_preferences(settings, name: str, index: int, total: int, counts: dict) -> str | None:
    from bot.pipelines import preferences

    def accept() -> tuple[str, str]:
        return (
            f"accepted: {_shown(settings, preferences.accept_preferences(settings, name))} is reviewed",
            "preferences",
        )

    read = partial(preferences.read_preference_file, settings, name)
    reject = partial(preferences.reject_preferences, settings, name)
    return _review(
        _Reviewed(name, "preferences", PREFERENCE_CHOICES, read, {"a": accept}, reject), index, total, counts
    )


def _summary(counts: dict, settings) -> int:
    from bot.pipelines import drafts

    left = len(drafts.draft_names(settings))
    preferences = f", {counts['preferences']} preference file(s)" if counts.get("preferences") else ""
    print(
        f"\naccepted {counts['dialogues']} into dialogues and {counts['tests']} into tests{preferences}, "
        f"rejected {counts['rejected']}, "
        f"skipped {counts['skipped']}; {left} draft{'s' if left != 1 else ''} left"
    )
    sys.stdout.flush()
    return 0


AUGMENT_HELP = """The training dialogues rewritten in the shapes customers write (details before the
bot asks, two requests in one message, typos, text-speak, thanks, frustration), one draft per
shape under training_data/drafts/.
The bot's steps stay the same and every argument value stays exactly as it was. Nothing is trained
on until a person accepts it: see 'bot data review'."""


def cmd_augment(args) -> int:
    from bot.config import load_settings
    from bot.data.project import validate
    from bot.pipelines.augment import SHAPES, write_drafts

    settings = load_settings(args.project)
    shapes = args.shape or list(SHAPES)
    written = write_drafts(settings, validate(settings), shapes, seed=args.seed, tag=args.tag)
    if not written:
        print("no dialogue changes in those shapes: nothing written")
        return 0
    for draft in written:
        state = "valid" if not draft.problems else f"{len(draft.problems)} problems, first: {draft.problems[0]}"
        print(f"{draft.shape}: {draft.dialogues} dialogues in training_data/drafts/{draft.name}.yml ({state})")
    print("review them with 'bot data review' (or the console); until accepted they are never trained on")
    return 0


def _from_conversations(data_commands, name: str, help: str, description: str, again: str):
    """A command that writes from stored conversations: --conversation and --since."""
    command = data_commands.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_argument(
        "--conversation", metavar="ID", help=f"only this conversation ({again} even if it was before)"
    )
    command.add_argument("--since", metavar="YYYY-MM-DD", help="only conversations active on or after this day (UTC)")
    return command


def add_data_commands(data_commands: argparse._SubParsersAction) -> None:
    export_data = _from_conversations(
        data_commands,
        "export",
        "stored conversations into redacted dialogue drafts under training_data/drafts/",
        EXPORT_HELP,
        "drafted again",
    )
    export_data.add_argument("--handed-off", action="store_true", help="only conversations handed to a person")
    export_data.add_argument(
        "--rated", choices=["down", "up"], help="only conversations with a bot message the customer rated so"
    )
    export_data.set_defaults(run=cmd_export)
    augment = data_commands.add_parser(
        "augment",
        help="the training dialogues rewritten in the shapes customers write, as drafts to review",
        description=AUGMENT_HELP,
    )
    augment.add_argument(
        "--shape",
        action="append",
        choices=["details-first", "two-requests", "typos", "text-speak", "thanks", "irate", "mixed"],
        help="a shape to write (again for more; default: all)",
    )
    augment.add_argument("--tag", help="only dialogues with this tag")
    augment.add_argument("--seed", type=int, default=0, help="picks among the choices a shape makes (default 0)")
    augment.set_defaults(run=cmd_augment)
    _from_conversations(
        data_commands,
        "preferences",
        "rated replies and agents' corrections into preference data under training_data/preferences/",
        PREFERENCES_HELP,
        "written again",
    ).set_defaults(run=cmd_preferences)
    data_commands.add_parser(
        "review",
        help="walk the drafts and preference data: show each with its validation; accept, edit, or reject",
    ).set_defaults(run=cmd_review)
