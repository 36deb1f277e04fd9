"""Rules a well-formed set of dialogues follows, beyond the shape of each file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from bot.data.grounding import source_text, ungrounded
from bot.data.leak_guard import MIN_SECRET_CHARS, letters
from bot.data.person_requests import PersonRequestRule
from bot.data.schema import (
    HANDOFF_TOOL,
    Action,
    ActionTurn,
    BotTurn,
    Dialogue,
    HandoffTurn,
    Persona,
    TrainingData,
    UserTurn,
)
from bot.errors import Problem
from bot.typed import did_you_mean
from bot.yamlsource import Document

BOT_STEPS = (BotTurn, ActionTurn, HandoffTurn)
TURN_NAMES = {UserTurn: "user", BotTurn: "bot", ActionTurn: "action", HandoffTurn: "handoff"}


def check_person_requests(persona: Persona, doc: Document) -> list[Problem]:
    """Every pattern of `asking_for_a_person` must be a valid regular expression."""
    rule = PersonRequestRule.of(persona.asking_for_a_person)
    return [
        doc.problem(("asking_for_a_person", section, k), f"not a valid regular expression: {error}")
        for section, k, error in rule.problems()
    ]


def check_secret(persona: Persona, doc: Document) -> list[Problem]:
    """The leak guard finds the secret in any spacing, so it must be long enough to be unmistakable."""
    found = len(letters(persona.secret)[0])
    if not persona.secret or found >= MIN_SECRET_CHARS:
        return []
    return [
        doc.problem(
            ("secret",),
            f"the secret has {found} letters or digits; it needs at least {MIN_SECRET_CHARS}, "
            "or the leak guard would cut ordinary replies that spell it",
        )
    ]


def check_actions(actions: dict[str, Action], doc: Document) -> list[Problem]:
    problems = []
    for name, action in actions.items():
        if name == HANDOFF_TOOL:
            problems.append(
                doc.problem(("actions", name), f"'{HANDOFF_TOOL}' is built in: use a 'handoff' turn", key=True)
            )
        for arg_name, arg in action.arguments.items():
            if arg.pattern is not None:
                try:
                    re.compile(arg.pattern)
                except re.error as e:
                    loc = ("actions", name, "arguments", arg_name, "pattern")
                    problems.append(doc.problem(loc, f"not a valid regular expression: {e}"))
                if arg.type != "string":
                    loc = ("actions", name, "arguments", arg_name, "pattern")
                    message = f"a pattern is for a string argument, not '{arg.type}'"
                    problems.append(doc.problem(loc, message, key=True))
            for k, value in enumerate(arg.enum or []):
                if not arg.has_type(value):
                    loc = ("actions", name, "arguments", arg_name, "enum", k)
                    problems.append(
                        doc.problem(loc, f"enum value {value!r} is not of the argument's type '{arg.type}'")
                    )
    return problems


def _fits(declared, value) -> bool:
    try:
        return declared.fits_pattern(value)
    except re.error:  # reported once, at the declaration
        return True


def _check_args(d: Dialogue, j: int, turn: ActionTurn, action: Action) -> list[Problem]:
    problems = []
    for name, value in turn.args.items():
        declared = action.arguments.get(name)
        if declared is None:
            hint = did_you_mean(name, action.arguments)
            problems.append(
                d.problem(
                    "turns",
                    j,
                    "args",
                    name,
                    message=f"action '{turn.action}' has no argument '{name}'{hint}",
                    key=True,
                )
            )
            continue
        if not declared.has_type(value):
            hint = " (put it in quotes)" if declared.type == "string" and isinstance(value, (int, float)) else ""
            message = f"argument '{name}' of '{turn.action}' must be {declared.type}, not {json.dumps(value)}{hint}"
            problems.append(d.problem("turns", j, "args", name, message=message))
        elif declared.enum is not None and value not in declared.enum:
            allowed = ", ".join(str(v) for v in declared.enum)
            problems.append(
                d.problem(
                    "turns", j, "args", name, message=f"argument '{name}' must be one of: {allowed}; not '{value}'"
                )
            )
        elif not _fits(declared, value):
            message = f"argument '{name}' {json.dumps(value)} does not match its pattern '{declared.pattern}'"
            problems.append(d.problem("turns", j, "args", name, message=message))
    for name, declared in action.arguments.items():
        if declared.required and name not in turn.args:
            problems.append(d.problem("turns", j, "action", message=f"action '{turn.action}' needs argument '{name}'"))
    return problems


def _check_order(d: Dialogue, *, may_end_with_a_call: bool = False) -> list[Problem]:
    problems = []
    previous = None
    for j, turn in enumerate(d.turns):
        kind = TURN_NAMES[type(turn)]
        if previous is None and not isinstance(turn, UserTurn):
            problems.append(d.problem("turns", j, message=f"a dialogue starts with a user turn, not a {kind} turn"))
        elif isinstance(previous, UserTurn) and isinstance(turn, UserTurn):
            problems.append(
                d.problem(
                    "turns",
                    j,
                    message="two user turns in a row: the bot must answer the first before the next user turn "
                    "(merge them or add a bot turn)",
                )
            )
        elif isinstance(previous, BotTurn) and not isinstance(turn, UserTurn):
            problems.append(
                d.problem(
                    "turns",
                    j,
                    message=f"a {kind} turn can't follow a bot turn: the bot takes one step per user turn or action "
                    "result",
                )
            )
        elif isinstance(previous, ActionTurn) and isinstance(turn, UserTurn):
            problems.append(
                d.problem("turns", j, message="the bot must reply to an action's result before the next user turn")
            )
        if isinstance(turn, HandoffTurn) and j != len(d.turns) - 1:
            problems.append(d.problem("turns", j, message="a handoff ends the conversation: it must be the last turn"))
        previous = turn
    if not any(isinstance(t, BOT_STEPS) for t in d.turns):
        problems.append(d.problem("id", message=f"dialogue '{d.id}' has no bot turn: add the bot's reply"))
    elif isinstance(previous, UserTurn):
        problems.append(
            d.problem("turns", len(d.turns) - 1, message="the dialogue ends with a user turn: add the bot's reply")
        )
    elif isinstance(previous, ActionTurn) and not may_end_with_a_call:
        problems.append(
            d.problem(
                "turns",
                len(d.turns) - 1,
                message="the dialogue ends with an action: add the bot's reply that uses its result",
            )
        )
    return problems


def _turn_texts(turn) -> list[tuple[str, str]]:
    """(key, text) of everything in a turn the model reads or writes."""
    if isinstance(turn, UserTurn):
        return [("user", turn.user)]
    if isinstance(turn, BotTurn):
        return [("bot", turn.bot)]
    if isinstance(turn, HandoffTurn):
        return [("handoff", turn.handoff)]
    return [("action", json.dumps({"args": turn.args, "result": turn.result}, ensure_ascii=False))]


def _check_grounding(d: Dialogue, actions: dict[str, Action]) -> list[Problem]:
    """A `from: conversation` argument's value must appear earlier in the dialogue, in a user
    turn or an action's result: the data must never teach the model to invent one."""
    problems, seen = [], []
    for j, turn in enumerate(d.turns):
        if isinstance(turn, UserTurn):
            seen.append(turn.user)
        elif isinstance(turn, ActionTurn) and turn.action in actions:
            for name in ungrounded(actions[turn.action], turn.args, seen):
                value = json.dumps(turn.args[name])
                message = (
                    f"'{name}' {value} appears nowhere before this call: "
                    "the customer must give it (or an earlier action's result hold it) first"
                )
                problems.append(d.problem("turns", j, "args", name, message=message))
            seen.append(source_text(turn.result))
    return problems


def _check_dialogue(
    d: Dialogue, data: TrainingData, max_length: int, count_tokens: Callable[[str], int], may_end_with_a_call: bool
) -> list[Problem]:
    problems = _check_order(d, may_end_with_a_call=may_end_with_a_call) + _check_grounding(d, data.actions)
    for j, turn in enumerate(d.turns):
        for key, text in _turn_texts(turn):
            if not text.strip() and key != "handoff":
                problems.append(d.problem("turns", j, key, message=f"empty {key} message"))
            # A token covers at least one byte, so only long texts need the tokenizer.
            elif len(text.encode()) > max_length and (n := count_tokens(text)) > max_length:
                problems.append(
                    d.problem(
                        "turns",
                        j,
                        key,
                        message=f"turn is {n:,} tokens, longer than the model's context of {max_length:,} "
                        "(model.max_length in config.yml)",
                    )
                )
        if isinstance(turn, ActionTurn):
            action = data.actions.get(turn.action)
            if action is None:
                hint = did_you_mean(turn.action, data.actions)
                problems.append(
                    d.problem(
                        "turns",
                        j,
                        "action",
                        message=f"unknown action '{turn.action}'{hint}: declare it in actions.yml",
                    )
                )
            else:
                problems += _check_args(d, j, turn, action)
    if d.expect:
        for k, name in enumerate(d.expect.must_call):
            if name not in data.actions:
                hint = did_you_mean(name, data.actions)
                problems.append(d.problem("expect", "must_call", k, message=f"unknown action '{name}'{hint}"))
    return problems


def check(
    data: TrainingData, *, max_length: int, count_tokens: Callable[[str], int], may_end_with_a_call: bool = False
) -> list[Problem]:
    """Every problem in the dialogues: order of turns, actions and arguments, lengths, duplicate ids.
    `may_end_with_a_call`: a dialogue may end with an action call (a preference about that call)."""
    problems = []
    first_seen: dict[str, Dialogue] = {}
    for d in data.dialogues:
        if d.id in first_seen:
            first = first_seen[d.id]
            line, col = first.doc.where(first.loc + ("id",))
            problems.append(
                d.problem(
                    "id", message=f"duplicate dialogue id '{d.id}' (first used at {first.doc.path}:{line}:{col})"
                )
            )
        else:
            first_seen[d.id] = d
        problems += _check_dialogue(d, data, max_length, count_tokens, may_end_with_a_call)
    return problems
