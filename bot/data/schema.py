"""The typed shape of `training_data/`: persona, declared actions and dialogues.

The YAML format itself is documented in docs/dialogue-format.md; this module is its single
definition in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from bot.typed import Strict
from bot.yamlsource import Document, Path_

HANDOFF_TOOL = "handoff_to_human"
ArgType = Literal["string", "integer", "number", "boolean"]
PYTHON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


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


class Argument(Strict):
    type: ArgType = "string"
    description: str = ""
    required: bool = True
    enum: list[str | int | float] | None = None

    def has_type(self, value: Any) -> bool:
        """Whether `value` is of the declared type (a bool is not a number here)."""
        return isinstance(value, PYTHON_TYPES[self.type]) and (self.type == "boolean" or not isinstance(value, bool))


class Action(Strict):
    description: str = ""
    arguments: dict[str, Argument] = {}


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

    def problem(self, *subpath: str | int, message: str, key: bool = False):
        """A problem located at `subpath` inside this dialogue (e.g. 'turns', 2, 'user')."""
        return self.doc.problem(self.loc + subpath, message, key=key)

    @property
    def adversarial(self) -> bool:
        return "adversarial" in self.tags


@dataclass(frozen=True)
class TrainingData:
    persona: Persona
    actions: dict[str, Action]
    dialogues: tuple[Dialogue, ...]

    @property
    def train(self) -> list[Dialogue]:
        return [d for d in self.dialogues if not d.held_out and not d.draft]

    @property
    def test(self) -> list[Dialogue]:
        return [d for d in self.dialogues if d.held_out and not d.draft]
