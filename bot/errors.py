"""Typed errors raised by the library. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a user's file, printed like a compiler diagnostic (1-based line and column)."""

    path: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"


class BotError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidFiles(BotError):
    """User files (config, persona, dialogues) have problems; all of them are listed."""

    def __init__(self, problems: list[Problem], then: str = ""):
        self.problems = sorted(problems)
        self.then = then  # what to do once they are fixed, when there is more to it than trying again
        super().__init__("\n".join(str(p) for p in self.problems))


class BaseModelUnavailable(BotError):
    """The configured base model can't be found on this machine."""


class RenderError(BotError):
    """A conversation can't be turned into model tokens (template mismatch, too long)."""


class RenderCancelled(RenderError):
    """Rendering was given up: the request it was for has gone."""


class ProjectExists(BotError):
    """`bot init` was pointed at a folder that already holds a bot project."""
