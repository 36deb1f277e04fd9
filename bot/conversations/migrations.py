"""Schema migrations for the conversation stores, in the shape of simonw/llm's `migrations.py`:
each store has one `Migrations` list; a function decorated with it is one step, steps run in the
order they are defined, each once, and the names of those applied are recorded in the store
itself (a `_migrations` table in SQLite, `bot_migrations` in PostgreSQL, a hash in Redis).
The stores run their pending steps when they open.

The first step of every store is the schema as it was before migrations existed, written so
that running it on a database made by that code changes nothing: such a database is recognised
and carries on, with every event kept.

Never edit or reorder a step that has shipped: add a new one at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bot.errors import BotError


class MigrationError(BotError):
    """The store's schema can't be brought up to date (a step failed, or a newer version wrote it)."""


class Migrations:
    """An ordered list of schema steps; use an instance as a decorator to add one."""

    def __init__(self, store: str):
        self.store = store
        self.steps: list[tuple[str, Callable[..., Any]]] = []

    def __call__(self, step: Callable[..., Any]) -> Callable[..., Any]:
        if any(name == step.__name__ for name, _ in self.steps):
            raise ValueError(f"{self.store}: two migrations are named {step.__name__}")
        self.steps.append((step.__name__, step))
        return step

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.steps]

    def pending(self, applied: Iterable[str], where: str) -> list[tuple[str, Callable[..., Any]]]:
        """The steps not yet applied, in order. A recorded name this code doesn't know means a
        newer version migrated the store: refuse rather than guess."""
        applied = set(applied)
        unknown = sorted(applied - set(self.names))
        if unknown:
            names = ", ".join(unknown)
            raise MigrationError(
                f"{where} has been migrated by a newer version of bot (unknown migration {names}); "
                "upgrade bot to use it"
            )
        return [(name, step) for name, step in self.steps if name not in applied]
