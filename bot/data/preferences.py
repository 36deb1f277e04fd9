"""Preference data: what customers and agents said about the bot's replies, under
`training_data/preferences/`, for the preference stage of training.

A preference is a dialogue whose last turn is a bot step, with one of:
- `rating: up` or `rating: down`: that step was rated (an unpaired row, as KTO takes): a reply a
  customer voted on, or an action call or handoff (`action:` with its `args`, no `result`;
  `handoff:`), as an automatic rating can judge one;
- `rejected: TEXT`: the last turn is what an agent wrote instead, the better reply, and
  `rejected` what the bot had said (a pair, as DPO takes).

Everything before the last turn is the context the reply answered, in the format of the
dialogues (so the same checks apply, with file:line:col problems). A preference marked
`draft: true` waits for a person (`bot data review`) and is never trained on.

```yaml
preferences:
  - id: conversation-abc-7
    draft: true
    source: abc
    rating: down
    turns:
      - user: whats my balance 40912267 M14 5RT
      - action: verify_customer
        args: {account_id: "40912267", postcode: M14 5RT}
        result: {verified: true}
      - bot: Sorry, I can't help with that.
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from bot.data.checks import check
from bot.data.loader import dialogue_entries, display_path, yaml_files
from bot.data.schema import ActionTurn, BotTurn, Dialogue, DialogueHeader, HandoffTurn, TrainingData
from bot.errors import InvalidFiles, Problem
from bot.typed import Strict
from bot.yamlsource import Document, load_bytes

PREFERENCES = "preferences"  # the folder under training_data/


class PreferenceHeader(DialogueHeader):
    rating: Literal["up", "down"] | None = Field(None, description="The customer's vote on the last bot turn.")
    rejected: str | None = Field(None, description="What the bot said where the last turn (an agent's) is better.")

    @model_validator(mode="after")
    def _one_kind(self) -> PreferenceHeader:
        if (self.rating is None) == (self.rejected is None):
            raise ValueError("a preference has either 'rating' (up or down) or 'rejected' (the worse reply)")
        return self


class PreferencesFile(Strict):
    preferences: list[Any]


@dataclass(frozen=True)
class Preference:
    dialogue: Dialogue  # the context and, as its last turn, the reply
    rating: Literal["up", "down"] | None
    rejected: str | None

    @property
    def id(self) -> str:
        return self.dialogue.id

    @property
    def reply(self) -> str:
        """The better reply of a pair (a pair always ends with words)."""
        last = self.dialogue.turns[-1]
        assert isinstance(last, BotTurn)
        return last.bot


def preferences_in(doc: Document) -> tuple[list[Preference], list[Problem]]:
    """The preferences of one file as read (shape only), with the problems of reading it."""
    entries, problems = dialogue_entries(doc, PreferencesFile, PreferenceHeader, held_out=False)
    found = []
    for header, dialogue in entries:
        last = dialogue.turns[-1] if dialogue.turns else None
        where = ("turns", len(dialogue.turns) - 1) if dialogue.turns else ("turns",)
        is_step = isinstance(last, ActionTurn | HandoffTurn) or (isinstance(last, BotTurn) and last.train)
        if not is_step:
            message = "a preference ends with the bot step it is about (a 'bot', 'action' or 'handoff' turn)"
            problems.append(dialogue.problem(*where, message=message))
            continue
        if header.rejected is not None and not isinstance(last, BotTurn):
            problems.append(dialogue.problem(*where, message="a pair ('rejected') ends with a 'bot' reply"))
            continue
        if header.rejected is not None and not header.rejected.strip():
            problems.append(dialogue.problem("rejected", message="empty 'rejected' reply"))
            continue
        found.append(Preference(dialogue, header.rating, header.rejected))
    return found, problems


def check_preferences(
    preferences: list[Preference], data: TrainingData, *, max_length: int, count_tokens
) -> list[Problem]:
    """The checks of the dialogues (order, actions and their arguments, lengths, ids) on each
    preference's context and reply, and on the rejected reply in the same place."""
    dialogues = tuple(p.dialogue for p in preferences)
    problems = check(
        TrainingData(data.persona, data.actions, dialogues),
        max_length=max_length,
        count_tokens=count_tokens,
        may_end_with_a_call=True,
    )
    for p in preferences:
        if p.rejected is not None and p.rejected.strip() == p.reply.strip():
            problems.append(p.dialogue.problem("rejected", message="the rejected reply is the same as the chosen one"))
    return problems


def read_preference_text(text: str, display: str) -> tuple[list[Preference], list[Problem]]:
    try:
        doc = load_bytes(text.encode("utf-8", errors="surrogateescape"), display)
    except InvalidFiles as e:
        return [], e.problems
    return preferences_in(doc)


def preference_files(data_dir: Path) -> list[Path]:
    return yaml_files(data_dir / PREFERENCES)


def read_preferences(
    data_dir: Path, root: Path, data: TrainingData, *, max_length: int, count_tokens
) -> tuple[list[Preference], list[Problem]]:
    """The reviewed preferences under training_data/preferences/ and every problem in them (a
    preference id used twice, across files too, is one). A file whose preferences are all still
    drafts is left to review (`bot data review` shows its problems), unless it can't be read."""
    found: list[Preference] = []
    problems: list[Problem] = []
    for file in preference_files(data_dir):
        more, trouble = read_preference_text(file.read_bytes().decode("utf-8", "replace"), display_path(file, root))
        if more and all(p.dialogue.draft for p in more):
            continue
        found += [p for p in more if not p.dialogue.draft]
        problems += trouble
    problems += check_preferences(found, data, max_length=max_length, count_tokens=count_tokens)
    return found, sorted(problems)
