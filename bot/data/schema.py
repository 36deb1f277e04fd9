"""The typed shape of `training_data/`: persona, declared actions and dialogues.

The YAML format itself is documented in docs/dialogue-format.md; this module is its single
definition in code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, Field

from bot.typed import Strict
from bot.yamlsource import Document, Path_

HANDOFF_TOOL = "handoff_to_human"
DEFAULT_MAX_CHARS = 64  # a text argument's longest value in a tool call (ids, dates, codes)
HANDOFF_REASON_MAX_CHARS = 160  # the handoff's free-text reason: one sentence for the agent
DEFAULT_REFUSAL = "Sorry, I can't share that. Is there anything else I can help you with?"
DEFAULT_HANDOFF_OFFER = "A member of our team is best placed to help with this. Would you like me to pass you to them?"
ArgType = Literal["string", "integer", "number", "boolean"]
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


class PersonRequests(Strict):
    """Phrasings of asking for a person (regular expressions over the customer's message,
    lower-cased, accents and punctuation removed). See bot/data/person_requests.py."""

    words: dict[str, str] = Field({}, description="Named alternatives: `{name}` in a pattern stands for them.")
    patterns: list[str] = []
    unless: list[str] = Field([], description="Blanked out before matching (another sense of 'person').")


class Persona(Strict):
    name: str
    company: str
    about: str = ""
    helps_with: list[str] = []
    does_not_help_with: list[str] = []
    tone: str = ""
    rules: list[str] = []
    secret: str = Field("", description="Marker in the system prompt that must never appear in a reply.")
    handoff_message: str = "I'm passing you to a member of our team, who will reply here shortly."
    handoff_offer: str = Field(
        DEFAULT_HANDOFF_OFFER,
        min_length=1,
        description="Asked instead of handing over when the model would hand over a customer who neither "
        "asked for a person nor was offered one; a yes gets the handoff.",
    )
    asking_for_a_person: PersonRequests = Field(
        default_factory=lambda: PersonRequests(),
        description="Messages that ask for a person are handed off before the model answers.",
    )
    refusal: str = Field(
        DEFAULT_REFUSAL,
        min_length=1,
        description="What the customer sees instead of a reply that would have repeated the instructions "
        "or the secret (the leak guard).",
    )


class Argument(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    type: ArgType = "string"
    description: str = ""
    required: bool = True
    enum: list[str | int | float] | None = None
    source: Literal["model", "conversation"] = Field(
        "model",
        alias="from",
        description="conversation: the value must appear in what the customer wrote or in an earlier action's result.",
    )
    max_chars: int = Field(DEFAULT_MAX_CHARS, gt=0, description="Longest text value a tool call may carry.")
    pattern: str | None = Field(
        None, description="A regular expression the whole value must match, such as '\\d{8}' for an account number."
    )

    @property
    def grounded(self) -> bool:
        return self.source == "conversation"

    def fits_pattern(self, value: Any) -> bool:
        """Whether `value` matches `pattern` whole (true without a pattern)."""
        return self.pattern is None or re.fullmatch(self.pattern, str(value)) is not None

    def has_type(self, value: Any) -> bool:
        """Whether `value` is of the declared type (a bool is not a number here)."""
        return isinstance(value, PYTHON_TYPES[self.type]) and (self.type == "boolean" or not isinstance(value, bool))


DEFAULT_STATUS = "One moment while I look into that…"


class Action(Strict):
    description: str = ""
    arguments: dict[str, Argument] = {}
    status: str = Field(
        DEFAULT_STATUS,
        description="What the customer sees while the bot calls it and waits for its result (never stored).",
    )


class ActionsFile(Strict):
    actions: dict[str, Action] = {}


class Expectations(Strict):
    """What evaluation checks over every reply the model gives in a held-out dialogue."""

    must_not_contain: list[str] = []
    must_contain_one_of: list[str] = []
    must_handoff: bool | None = None
    must_call: list[str] = []


class UserTurn(Strict):
    user: str


class BotTurn(Strict):
    bot: str
    train: bool = True


class ActionTurn(Strict):
    action: str
    args: dict[str, Any] = {}
    result: Any = None


class HandoffTurn(Strict):
    handoff: str


Turn = UserTurn | BotTurn | ActionTurn | HandoffTurn
TURN_KINDS: dict[str, type[Strict]] = {"user": UserTurn, "bot": BotTurn, "action": ActionTurn, "handoff": HandoffTurn}


class DialogueHeader(Strict):
    """Everything in a dialogue except its turns, which are parsed one by one (see loader)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tags: list[str] = []
    description: str = ""
    draft: bool = False
    turns: list[Any]
    expect: Expectations | None = None
    source: str = Field("", description="The stored conversation it was drafted from (`bot data export`).")


class DialogueFile(Strict):
    dialogues: list[Any]


@dataclass(frozen=True)
class Dialogue:
    id: str
    tags: tuple[str, ...]
    turns: tuple[Turn, ...]
    draft: bool
    expect: Expectations | None
    held_out: bool
    doc: Document = field(compare=False, repr=False)
    loc: Path_ = field(compare=False, repr=False)
    source: str = field(default="", compare=False)  # the stored conversation it was drafted from

    def problem(self, *subpath: str | int, message: str, key: bool = False):
        """A problem located at `subpath` inside this dialogue (e.g. 'turns', 2, 'user')."""
        return self.doc.problem(self.loc + subpath, message, key=key)

    @property
    def adversarial(self) -> bool:
        return "adversarial" in self.tags


class PersonRequestsFile(Strict):
    """training_data/person_requests.yml: examples for the person-request classifier."""

    asks_for_a_person: list[str] = []
    does_not: list[str] = Field([], description="Messages that don't ask for a person (some mention people).")


@dataclass(frozen=True)
class PersonExample:
    """A customer message and whether it asks for a person."""

    text: str
    asks: bool


@dataclass(frozen=True)
class TrainingData:
    persona: Persona
    actions: dict[str, Action]
    dialogues: tuple[Dialogue, ...]
    person_examples: tuple[PersonExample, ...] = ()  # training_data/person_requests.yml

    @property
    def train(self) -> list[Dialogue]:
        return [d for d in self.dialogues if not d.held_out and not d.draft]

    @property
    def test(self) -> list[Dialogue]:
        return [d for d in self.dialogues if d.held_out and not d.draft]
