"""What the server needs to know about the bot besides its weights: the system prompt it was
trained with, the actions it may call (with their argument declarations), what it says when
it hands over or refuses, and the replies it was taught (the leak guard never cuts those).
`bot data compile` writes it to build/profile.json and training copies it into the model's folder,
so a served model always gets the prompt it learned with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from bot.data.person_classifier import PersonRequestDetector, training_examples
from bot.data.person_requests import PersonRequestRule
from bot.data.prompt import system_prompt
from bot.data.schema import (
    DEFAULT_HANDOFF_OFFER,
    DEFAULT_REFUSAL,
    Action,
    BotTurn,
    PersonExample,
    PersonRequests,
    TrainingData,
)

PROFILE_FILE = "profile.json"


@dataclass(frozen=True)
class BotProfile:
    system_prompt: str
    actions: dict[str, Action]
    handoff_message: str
    secret: str = ""
    person_requests: PersonRequests = field(default_factory=PersonRequests)
    refusal: str = DEFAULT_REFUSAL
    # The bot turns of the training dialogues; None: not known (a model trained before profiles
    # carried them), so the server takes them from the project's training data.
    taught_replies: tuple[str, ...] | None = None
    # What the person-request classifier learns from (bot.data.person_classifier); None: not
    # known (a model trained before profiles carried them): the project's examples stand in.
    person_examples: tuple[PersonExample, ...] | None = None
    handoff_offer: str = DEFAULT_HANDOFF_OFFER

    @cached_property
    def person_detector(self) -> PersonRequestDetector:
        """Decides, before the model, that a customer asked for a person."""
        return PersonRequestDetector(self.person_examples or (), PersonRequestRule.of(self.person_requests))

    def to_json(self) -> dict:
        return {
            "system_prompt": self.system_prompt,
            "actions": {name: action.model_dump(mode="json", by_alias=True) for name, action in self.actions.items()},
            "handoff_message": self.handoff_message,
            "handoff_offer": self.handoff_offer,
            "secret": self.secret,
            "person_requests": self.person_requests.model_dump(mode="json"),
            "refusal": self.refusal,
            "taught_replies": list(self.taught_replies) if self.taught_replies is not None else None,
            "person_examples": (
                [[e.text, e.asks] for e in self.person_examples] if self.person_examples is not None else None
            ),
        }

    @classmethod
    def from_json(cls, value: dict) -> BotProfile:
        actions = {name: Action.model_validate(spec) for name, spec in value["actions"].items()}
        requests = PersonRequests.model_validate(value.get("person_requests", {}))
        taught = value.get("taught_replies")
        examples = value.get("person_examples")
        return cls(
            value["system_prompt"],
            actions,
            value["handoff_message"],
            value.get("secret", ""),
            requests,
            value.get("refusal", DEFAULT_REFUSAL),
            tuple(taught) if taught is not None else None,
            tuple(PersonExample(text, bool(asks)) for text, asks in examples) if examples is not None else None,
            value.get("handoff_offer", DEFAULT_HANDOFF_OFFER),
        )

    def argument_problems(self, name: str, arguments: dict) -> list[str]:
        """Why a call of `name` with `arguments` must not run (empty: it may)."""
        action = self.actions.get(name)
        if action is None:
            return [f"'{name}' is not a declared action"]
        problems = [f"unknown argument '{a}'" for a in arguments if a not in action.arguments]
        for arg_name, spec in action.arguments.items():
            if arg_name not in arguments:
                if spec.required:
                    problems.append(f"missing argument '{arg_name}'")
                continue
            value = arguments[arg_name]
            if not spec.has_type(value):
                problems.append(f"argument '{arg_name}' must be {spec.type}")
            elif spec.enum is not None and value not in spec.enum:
                problems.append(f"argument '{arg_name}' must be one of {spec.enum}")
            elif not spec.fits_pattern(value):
                problems.append(f"argument '{arg_name}' must match {spec.pattern}")
        return problems


def profile_of(data: TrainingData) -> BotProfile:
    persona = data.persona
    bot_turns = [turn for d in data.train for turn in d.turns if isinstance(turn, BotTurn)]
    taught = dict.fromkeys(turn.bot for turn in bot_turns)  # in order, once each
    return BotProfile(
        system_prompt(persona, data.actions),
        dict(data.actions),
        persona.handoff_message,
        persona.secret,
        persona.asking_for_a_person,
        persona.refusal,
        tuple(taught),
        training_examples(data),
        persona.handoff_offer,
    )


def read_profile(folder: Path) -> BotProfile | None:
    path = folder / PROFILE_FILE
    return BotProfile.from_json(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def trained_profile(folder: Path, current: Callable[[], BotProfile]) -> BotProfile:
    """The profile a trained model in `folder` was trained with. `current` (the project's profile,
    built only if needed) stands in when the folder has none, and lends its taught replies to a
    profile written before profiles kept them."""
    profile = read_profile(folder)
    if profile is None:
        return current()
    if profile.taught_replies is None:
        profile = replace(profile, taught_replies=current().taught_replies)
    if profile.person_examples is None:
        profile = replace(profile, person_examples=current().person_examples)
    return profile
