"""What the server needs to know about the bot besides its weights: the system prompt it was
trained with, the actions it may call (with their argument declarations) and what it says when
it hands over. `bot data compile` writes it to build/profile.json and training copies it into
the model's folder, so a served model always gets the prompt it learned with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from bot.data.prompt import system_prompt
from bot.data.person_requests import PersonRequestRule
from bot.data.schema import Action, PersonRequests, TrainingData

PROFILE_FILE = "profile.json"


@dataclass(frozen=True)
class BotProfile:
    system_prompt: str
    actions: dict[str, Action]
    handoff_message: str
    secret: str = ""
    person_requests: PersonRequests = field(default_factory=PersonRequests)

    @cached_property
    def person_rule(self) -> PersonRequestRule:
        """Decides, before the model, that a customer asked for a person."""
        return PersonRequestRule.of(self.person_requests)

    def to_json(self) -> dict:
        return {
            "system_prompt": self.system_prompt,
            "actions": {name: action.model_dump(mode="json", by_alias=True) for name, action in self.actions.items()},
            "handoff_message": self.handoff_message,
            "secret": self.secret,
            "person_requests": self.person_requests.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, value: dict) -> BotProfile:
        actions = {name: Action.model_validate(spec) for name, spec in value["actions"].items()}
        requests = PersonRequests.model_validate(value.get("person_requests", {}))
        return cls(value["system_prompt"], actions, value["handoff_message"], value.get("secret", ""), requests)

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
        return problems


def profile_of(data: TrainingData) -> BotProfile:
    persona = data.persona
    return BotProfile(
        system_prompt(persona, data.actions), dict(data.actions), persona.handoff_message, persona.secret, persona.asking_for_a_person
    )


def read_profile(folder: Path) -> BotProfile | None:
    path = folder / PROFILE_FILE
    return BotProfile.from_json(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
