"""Loads `training_data/` into typed objects, collecting every problem instead of stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.data.checks import check_actions, check_person_requests, check_secret
from bot.data.schema import (
    TURN_KINDS,
    Action,
    ActionsFile,
    Dialogue,
    DialogueFile,
    DialogueHeader,
    Persona,
    PersonExample,
    PersonRequestsFile,
    TrainingData,
    Turn,
)
from bot.errors import InvalidFiles, Problem
from bot.typed import did_you_mean, parse
from bot.yamlsource import Document, load

YAML_SUFFIXES = (".yml", ".yaml")


def display_path(file: Path, root: Path) -> str:
    """A file as the project names it (training_data/...), or its whole path outside the project."""
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.as_posix()


def _read(file: Path, root: Path, problems: list[Problem]) -> Document | None:
    try:
        return load(file, display_path(file, root))
    except InvalidFiles as e:
        problems.extend(e.problems)
        return None


def _parse_turn(value: Any, doc: Document, loc: tuple) -> tuple[Turn | None, list[Problem]]:
    if not isinstance(value, dict):
        return None, [doc.problem(loc, "a turn must be a mapping such as 'user: text' or 'bot: text'")]
    kinds = [k for k in TURN_KINDS if k in value]
    if len(kinds) > 1:
        return None, [
            doc.problem(
                loc,
                "a turn has exactly one of 'user', 'bot', 'action' or 'handoff', "
                f"not both '{kinds[0]}' and '{kinds[1]}'",
            )
        ]
    if not kinds:
        unknown = next(iter(value), "")
        hint = did_you_mean(str(unknown), TURN_KINDS)
        if hint:
            return None, [doc.problem(loc + (unknown,), f"unknown key '{unknown}'{hint}", key=True)]
        return None, [doc.problem(loc, "a turn needs one of 'user', 'bot', 'action' or 'handoff'")]
    return parse(TURN_KINDS[kinds[0]], value, doc, loc)


def dialogues_in(doc: Document, held_out: bool) -> tuple[list[Dialogue], list[Problem]]:
    entries, problems = dialogue_entries(doc, DialogueFile, DialogueHeader, held_out=held_out)
    return [dialogue for _, dialogue in entries], problems


def dialogue_entries(
    doc: Document, file_model: type, header_model: type[DialogueHeader], *, held_out: bool
) -> tuple[list[tuple[Any, Dialogue]], list[Problem]]:
    """Every entry of the document's one list (`dialogues`, or another `file_model` names) as its
    parsed header and its dialogue; an entry that can't be read is a problem, not an entry."""
    (key,) = file_model.model_fields
    if not isinstance(doc.value, dict):
        return [], [doc.problem((), f"a {key} file is a mapping with a '{key}' list")]
    file, problems = parse(file_model, doc.value, doc)
    if file is None:
        return [], problems
    entries = []
    for i, raw in enumerate(getattr(file, key)):
        loc = (key, i)
        if not isinstance(raw, dict):
            problems.append(doc.problem(loc, "a dialogue must be a mapping with 'id', 'tags' and 'turns'"))
            continue
        header, found = parse(header_model, raw, doc, loc)
        problems += found
        if "expect" in raw and not held_out:
            problems.append(
                doc.problem(loc + ("expect",), "'expect' is only for held-out dialogues in tests/", key=True)
            )
        turns = []
        for j, raw_turn in enumerate(raw.get("turns") if isinstance(raw.get("turns"), list) else []):
            turn, found = _parse_turn(raw_turn, doc, loc + ("turns", j))
            problems += found
            turns.append(turn)
        if header is None or any(t is None for t in turns):
            continue
        dialogue = Dialogue(
            id=header.id,
            tags=tuple(header.tags),
            turns=tuple(turns),
            draft=header.draft,
            expect=header.expect,
            held_out=held_out,
            doc=doc,
            loc=loc,
            source=header.source,
        )
        entries.append((header, dialogue))
    return entries, problems


def yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in YAML_SUFFIXES and p.is_file()) if folder.is_dir() else []


def read_training_data(data_dir: Path, root: Path) -> tuple[TrainingData | None, list[Problem]]:
    """Parse every file under `data_dir`; returns what could be read and every problem found."""
    problems: list[Problem] = []
    persona_file = data_dir / "persona.yml"
    persona = None
    if not persona_file.exists():
        problems.append(
            Problem(
                display_path(persona_file, root),
                1,
                1,
                "missing: every bot needs a persona (run 'bot init' for an example)",
            )
        )
    elif doc := _read(persona_file, root, problems):
        persona, found = parse(Persona, doc.value, doc)
        problems += found
        if persona:
            problems += check_person_requests(persona, doc) + check_secret(persona, doc)

    actions: dict[str, Action] = {}
    actions_file = data_dir / "actions.yml"
    if actions_file.exists() and (doc := _read(actions_file, root, problems)):
        parsed, found = parse(ActionsFile, doc.value, doc)
        problems += found
        if parsed:
            actions = parsed.actions
            problems += check_actions(actions, doc)

    dialogues: list[Dialogue] = []
    for folder, held_out in ((data_dir / "dialogues", False), (data_dir / "tests", True)):
        for file in yaml_files(folder):
            if doc := _read(file, root, problems):
                found_dialogues, found = dialogues_in(doc, held_out)
                dialogues += found_dialogues
                problems += found
    if not any(not d.held_out for d in dialogues) and not problems:
        problems.append(
            Problem(
                display_path(data_dir / "dialogues", root),
                1,
                1,
                "no training dialogues found (*.yml files with a 'dialogues' list)",
            )
        )
    examples = _person_examples(data_dir / PERSON_REQUESTS_FILE, root, problems)
    if persona is None:
        return None, problems
    return TrainingData(persona, actions, tuple(dialogues), examples), problems


PERSON_REQUESTS_FILE = "person_requests.yml"


def _person_examples(file: Path, root: Path, problems: list[Problem]) -> tuple[PersonExample, ...]:
    """training_data/person_requests.yml, if there is one (see bot/data/person_classifier.py)."""
    if not file.exists() or not (doc := _read(file, root, problems)):
        return ()
    if doc.value is None:
        return ()
    parsed, found = parse(PersonRequestsFile, doc.value, doc)
    problems += found
    if parsed is None:
        return ()
    for label, texts in (("asks_for_a_person", parsed.asks_for_a_person), ("does_not", parsed.does_not)):
        problems += [doc.problem((label, i), "an empty message") for i, text in enumerate(texts) if not text.strip()]
    asks = [PersonExample(text, True) for text in parsed.asks_for_a_person]
    return tuple(asks + [PersonExample(text, False) for text in parsed.does_not])
