"""Conversation tests (`training_data/conversation_tests/*.yml`): whole conversations with
assertions on what the bot did, in the shape of Rasa's end-to-end tests. The format is
documented in docs/conversation-tests.md; this module is its single definition in code.

Never trained on. Validated like the dialogues, every problem located (`file:line:col`); a
customer message that is a near-copy of a dialogue's customer turn is refused, because a test
that repeats the training data measures memory, not the bot.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from bot.data.loader import display_path, yaml_files
from bot.data.schema import Action, TrainingData, UserTurn
from bot.errors import InvalidFiles, Problem
from bot.typed import Strict, did_you_mean, parse
from bot.yamlsource import Document, Path_, load

FOLDER = "conversation_tests"
NEAR_COPY_RATIO = 0.8  # similarity (difflib's ratio) from which a customer message counts as copied
NEAR_COPY_MIN_CHARS = 30  # shorter messages ("thanks", "yes please") are everyone's


class ArgumentPattern(Strict):
    matches: str = Field(description="A regular expression the whole value must match (case-insensitive).")


class ActionCall(Strict):
    name: str
    args: dict[str, Any] = {}


class TextCheck(Strict):
    contains: str | None = None
    text_matches: str | None = None


class SlotCheck(Strict):
    name: str
    value: Any = None


class Assertion(Strict):
    """One check; exactly one key is set."""

    action_executed: str | ActionCall | None = None
    action_not_executed: str | None = None
    handed_off: bool | None = None
    bot_uttered: TextCheck | None = None
    bot_did_not_utter: TextCheck | None = None
    slot_was_set: list[SlotCheck] | None = None
    slot_was_not_set: list[SlotCheck] | None = None

    @property
    def kind(self) -> str:
        return next(iter(self.model_fields_set))


class Step(Strict):
    """One thing that happens: a customer's message, an agent's, or the agent handing back."""

    user: str | None = None
    agent: str | None = None
    agent_hands_back: bool | None = None
    assertions: list[Assertion] = []

    @property
    def kind(self) -> str:
        return next(k for k in ("user", "agent", "agent_hands_back") if k in self.model_fields_set)


class ActionStub(Strict):
    """What an action server would answer (rasa-sdk's wire format), or an error."""

    events: list[dict[str, Any]] = []
    responses: list[dict[str, Any]] = []
    error: str | None = None


class TestCaseSpec(Strict):
    test_case: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    tags: list[str] = []
    stub_custom_actions: dict[str, ActionStub] = {}
    steps: list[Step] = Field(min_length=1)
    assertions: list[Assertion] = []


class TestFile(Strict):
    test_cases: list[Any]


@dataclass(frozen=True)
class ConversationTest:
    spec: TestCaseSpec
    doc: Document = field(compare=False, repr=False)
    loc: Path_ = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.test_case

    @property
    def where(self) -> str:
        line, col = self.doc.where(self.loc)
        return f"{self.doc.path}:{line}:{col}"

    def stubs(self) -> dict[str, dict]:
        return {name: stub.model_dump(exclude_none=True) for name, stub in self.spec.stub_custom_actions.items()}


def _regex_problem(pattern: str, doc: Document, loc: Path_) -> list[Problem]:
    try:
        re.compile(pattern)
    except re.error as e:
        return [doc.problem(loc, f"not a valid regular expression: {e}")]
    return []


def _action_problems(name: str, actions: dict[str, Action], doc: Document, loc: Path_) -> list[Problem]:
    if name in actions:
        return []
    return [doc.problem(loc, f"unknown action '{name}'{did_you_mean(name, actions)}")]


def _assertion_problems(a: Assertion, actions: dict[str, Action], doc: Document, loc: Path_) -> list[Problem]:
    if len(a.model_fields_set) != 1:
        keys = ", ".join(sorted(a.model_fields_set)) or "none"
        return [doc.problem(loc, f"an assertion has exactly one key (found: {keys})")]
    kind, problems = a.kind, []
    if kind in ("action_executed", "action_not_executed"):
        value = getattr(a, kind)
        call = value if isinstance(value, ActionCall) else ActionCall(name=value)
        where = loc + (kind, "name") if isinstance(value, ActionCall) else loc + (kind,)
        problems += _action_problems(call.name, actions, doc, where)
        if call.name in actions:
            declared = actions[call.name].arguments
            for arg, expected in call.args.items():
                at = loc + (kind, "args", arg)
                if arg not in declared:
                    problems.append(
                        doc.problem(
                            at, f"'{call.name}' has no argument '{arg}'{did_you_mean(arg, declared)}", key=True
                        )
                    )
                elif isinstance(expected, dict):
                    pattern, found = parse(ArgumentPattern, expected, doc, at)
                    problems += found or _regex_problem(pattern.matches, doc, at + ("matches",))
    elif kind in ("bot_uttered", "bot_did_not_utter"):
        check: TextCheck = getattr(a, kind)
        if len(check.model_fields_set) != 1:
            problems.append(doc.problem(loc + (kind,), "give exactly one of 'contains' or 'text_matches'"))
        elif check.text_matches is not None:
            problems += _regex_problem(check.text_matches, doc, loc + (kind, "text_matches"))
    return problems


def _step_problems(step: Step, actions: dict[str, Action], doc: Document, loc: Path_) -> list[Problem]:
    kinds = [k for k in ("user", "agent", "agent_hands_back") if k in step.model_fields_set]
    if len(kinds) != 1:
        return [doc.problem(loc, "a step has exactly one of 'user', 'agent' or 'agent_hands_back'")]
    problems = []
    if kinds[0] in ("user", "agent") and not getattr(step, kinds[0]).strip():
        problems.append(doc.problem(loc + (kinds[0],), "the message is empty"))
    if kinds[0] == "agent_hands_back" and step.agent_hands_back is not True:
        problems.append(
            doc.problem(loc + ("agent_hands_back",), "write 'agent_hands_back: true' or leave the step out")
        )
    for i, a in enumerate(step.assertions):
        problems += _assertion_problems(a, actions, doc, loc + ("assertions", i))
    return problems


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


class NearCopies:
    """The customer turns of the dialogues (trained on and held out), to find a test message that
    repeats one."""

    def __init__(self, data: TrainingData):
        self.turns = []
        for d in data.dialogues:
            for i, turn in enumerate(d.turns):
                if isinstance(turn, UserTurn):
                    line, _ = d.doc.where(d.loc + ("turns", i, "user"))
                    self.turns.append((_normal(turn.user), f"{d.doc.path}:{line}"))

    def of(self, text: str) -> str | None:
        """Where the turn that `text` nearly copies is, or None."""
        mine = _normal(text)
        if len(mine) < NEAR_COPY_MIN_CHARS:
            return None
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(mine)
        for theirs, where in self.turns:
            matcher.set_seq1(theirs)
            if matcher.real_quick_ratio() >= NEAR_COPY_RATIO and matcher.quick_ratio() >= NEAR_COPY_RATIO:
                if matcher.ratio() >= NEAR_COPY_RATIO:
                    return where
        return None


def tests_in(doc: Document, data: TrainingData, copies: NearCopies) -> tuple[list[ConversationTest], list[Problem]]:
    if not isinstance(doc.value, dict):
        return [], [doc.problem((), "a conversation test file is a mapping with a 'test_cases' list")]
    file, problems = parse(TestFile, doc.value, doc)
    if file is None:
        return [], problems
    found = []
    for i, raw in enumerate(file.test_cases):
        loc = ("test_cases", i)
        spec, parsed = parse(TestCaseSpec, raw, doc, loc)
        problems += parsed
        if spec is None:
            continue
        mine = []
        for name in spec.stub_custom_actions:
            mine += _action_problems(name, data.actions, doc, loc + ("stub_custom_actions", name))
        for j, step in enumerate(spec.steps):
            at = loc + ("steps", j)
            mine += _step_problems(step, data.actions, doc, at)
            if step.user and (twin := copies.of(step.user)):
                mine.append(doc.problem(at + ("user",), f"near-copy of the customer turn at {twin}: write it anew"))
        for j, a in enumerate(spec.assertions):
            mine += _assertion_problems(a, data.actions, doc, loc + ("assertions", j))
        problems += mine
        if not mine:
            found.append(ConversationTest(spec, doc, loc))
    return found, problems


def read_conversation_tests(
    data_dir: Path, root: Path, data: TrainingData
) -> tuple[list[ConversationTest], list[Problem]]:
    """Every conversation test under `data_dir/conversation_tests/`, and every problem found."""
    tests: list[ConversationTest] = []
    problems: list[Problem] = []
    copies = NearCopies(data)
    for file in yaml_files(data_dir / FOLDER):
        try:
            doc = load(file, display_path(file, root))
        except InvalidFiles as e:
            problems += e.problems
            continue
        found, found_problems = tests_in(doc, data, copies)
        tests += found
        problems += found_problems
    seen: dict[str, ConversationTest] = {}
    for test in tests:
        if test.name in seen:
            first = seen[test.name]
            problems.append(
                test.doc.problem(test.loc + ("test_case",), f"test_case '{test.name}' is also at {first.where}")
            )
        seen.setdefault(test.name, test)
    return tests, problems
