"""Turns a parsed YAML document into typed pydantic objects, with located, readable errors.

Every model the user writes in YAML derives from `Strict`: unknown keys are errors (with a
did-you-mean), and values are not coerced (`42` is not text, `"yes"` is not a boolean).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

from bot.errors import Problem
from bot.yamlsource import Document, Path_

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TYPE_NAMES = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    for kind in (bool, int, float, str, dict, list):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return type(value).__name__


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that owns the mapping at `loc`, following field annotations."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """`list[X]`, `X | None`, `dict[str, X]` -> X when X is a model."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _inner_model(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
        return None
    return annotation


def _message(model: type[BaseModel], error: dict) -> tuple[str, bool]:
    """(message, points_at_key) for one pydantic error."""
    loc = tuple(error["loc"])
    kind = error["type"]
    name = str(loc[-1]) if loc else ""
    value = error.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        choices = owner.model_fields if owner else ()
        return f"unknown key '{name}'{did_you_mean(name, choices)}", True
    if kind == "missing":
        return f"missing required key '{name}'", False
    where = f"'{name}' " if loc and isinstance(loc[-1], str) else ""
    if kind in ("string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type", "model_type"):
        wanted = {
            "string_type": "text",
            "int_type": "a whole number",
            "float_type": "a number",
            "bool_type": "true or false",
            "dict_type": "a mapping",
            "model_type": "a mapping",
            "list_type": "a list",
        }[kind]
        hint = " (put it in quotes)" if kind == "string_type" and isinstance(value, (int, float, bool)) else ""
        return f"{where}must be {wanted}, not {_describe(value)}{hint}", False
    message = error["msg"].removeprefix("Value error, ")  # a validator's own words
    return f"{where}{message[0].lower()}{message[1:]}", False


def parse(model: type[M], value: Any, doc: Document, loc: Path_ = ()) -> tuple[M | None, list[Problem]]:
    """Validate `value` (found at `loc` in `doc`) as `model`; problems point at the offending line."""
    try:
        return model.model_validate(value), []
    except pydantic.ValidationError as e:
        problems = []
        for error in e.errors():
            message, at_key = _message(model, error)
            problems.append(doc.problem(loc + tuple(error["loc"]), message, key=at_key))
        return None, problems
