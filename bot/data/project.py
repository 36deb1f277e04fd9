"""What `bot data validate|stats|compile` do, as library calls that raise typed errors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from bot.base_model import load_tokenizer
from bot.config import Settings
from bot.data import compiler
from bot.data.checks import check
from bot.data.conversation_tests import ConversationTest, read_conversation_tests
from bot.data.loader import read_training_data
from bot.data.preferences import Preference, read_preferences
from bot.data.schema import Dialogue, TrainingData
from bot.errors import InvalidFiles, Problem, RenderError
from bot.rendering import render_within


class LazyTokenizer:
    """Loads the base model's tokenizer the first time it is needed (validation rarely needs it)."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._tokenizer = None

    def get(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._settings.base_model, self._settings.cache_dir)
        return self._tokenizer

    def count(self, text: str) -> int:
        return len(self.get()(text, add_special_tokens=False)["input_ids"])


def validate(settings: Settings, tokenizer: LazyTokenizer | None = None) -> TrainingData:
    """Load and check everything under the data folder; raises InvalidFiles listing all problems."""
    return _validated(settings, tokenizer or LazyTokenizer(settings))[0]


def _validated(settings: Settings, tokenizer: LazyTokenizer) -> tuple[TrainingData, list[Preference]]:
    """The data and its reviewed preferences, every file checked; InvalidFiles listing all problems."""
    data, problems = read_training_data(settings.data_dir, settings.root)
    preferences: list[Preference] = []
    if data is not None:
        problems += check(data, max_length=settings.build.model.max_length, count_tokens=tokenizer.count)
        preferences, found = reviewed_preferences(settings, data, tokenizer)
        problems += found
    if problems:
        raise InvalidFiles(problems)
    assert data is not None
    return data, preferences


def reviewed_preferences(
    settings: Settings, data: TrainingData, tokenizer: LazyTokenizer | None = None
) -> tuple[list[Preference], list[Problem]]:
    """The reviewed preferences under training_data/preferences/ and their problems."""
    tokenizer = tokenizer or LazyTokenizer(settings)
    return read_preferences(
        settings.data_dir,
        settings.root,
        data,
        max_length=settings.build.model.max_length,
        count_tokens=tokenizer.count,
    )


@dataclass
class Counts:
    dialogues: int = 0
    turns: int = 0
    trained_turns: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    sequences: int = 0  # training sequences: a dialogue over model.max_length is split at user turns

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Stats:
    """Counts per data set ('train', 'test') and tag; the '(all)' row sums a set."""

    rows: dict[tuple[str, str], Counts] = field(default_factory=lambda: defaultdict(Counts))
    drafts: int = 0


def _count(data: TrainingData, dialogue: Dialogue, tokenizer, max_length: int) -> Counts:
    messages = compiler.to_examples(data, [dialogue])[0]["messages"]
    try:
        examples = render_within(tokenizer, messages, max_length, name=f"dialogue '{dialogue.id}'")
    except RenderError as e:
        raise InvalidFiles([dialogue.problem("id", message=str(e))]) from None
    trained = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1)]
    return Counts(
        dialogues=1,
        turns=len(dialogue.turns),
        trained_turns=len(trained),
        tokens=sum(len(e) for e in examples),
        trained_tokens=sum(e.trained_tokens for e in examples),
        sequences=len(examples),
    )


def statistics(settings: Settings, data: TrainingData, tokenizer: LazyTokenizer) -> Stats:
    stats = Stats(drafts=sum(d.draft for d in data.dialogues))
    problems = []
    for name, dialogues in (("train", data.train), ("test", data.test)):
        for d in dialogues:
            try:
                counts = _count(data, d, tokenizer.get(), settings.build.model.max_length)
            except InvalidFiles as e:
                problems += e.problems
                continue
            stats.rows[(name, "(all)")].add(counts)
            for tag in d.tags or ("(untagged)",):
                stats.rows[(name, tag)].add(counts)
    if problems:
        raise InvalidFiles(problems)
    return stats


def compile_data(settings: Settings) -> tuple[compiler.CompiledData, Stats]:
    """Validate, count, and write build/train.jsonl, build/test.jsonl and build/index.json."""
    tokenizer = LazyTokenizer(settings)
    data, preferences = _validated(settings, tokenizer)
    stats = statistics(settings, data, tokenizer)
    return compiler.write(data, settings.build_dir, preferences), stats


def conversation_tests(settings: Settings, data: TrainingData) -> list[ConversationTest]:
    """The project's conversation tests, checked against its data; raises InvalidFiles listing every problem."""
    tests, problems = read_conversation_tests(settings.data_dir, settings.root, data)
    if problems:
        raise InvalidFiles(problems)
    return tests
