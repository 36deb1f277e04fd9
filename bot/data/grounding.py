"""Grounded arguments: an action argument declared `from: conversation` (an account number, a
postcode, an order number) must carry a value the conversation already holds, in something the
customer wrote or in an earlier action's result. A value found nowhere was made up by the
model: the server never sends such a call and asks the customer instead, and the validator
keeps the training data from teaching invention."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from bot.data.schema import Action


def _plain(text: str) -> str:
    """Case and spacing don't matter: "ls6 2ab" is "LS6 2AB", "KM 104233" is not "KM-104233"."""
    return re.sub(r"\s+", "", text).lower()


def source_text(value: Any) -> str:
    """What a message or an action result says, as one searchable text."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def ungrounded(action: Action, arguments: dict[str, Any], sources: Iterable[str]) -> list[str]:
    """Names of the `from: conversation` arguments whose value appears in none of `sources`."""
    seen = [_plain(s) for s in sources]
    missing = []
    for name, spec in action.arguments.items():
        if not spec.grounded or name not in arguments:
            continue
        value = _plain(str(arguments[name]))
        if value and not any(value in text for text in seen):
            missing.append(name)
    return missing
