"""Grounded arguments: an action argument declared `from: conversation` (an account number, a
postcode, an order number) must carry a value the conversation already holds, in something the
customer wrote or in an earlier action's result. A value found nowhere was made up by the
model: the server never sends such a call and asks the customer instead, and the validator
keeps the training data from teaching invention.

The engine goes further: it copies grounded values instead of letting the model spell them.
`grounded_values` lists, for each grounded argument, what the conversation holds that it could
be (the matches of its `pattern`, or else runs of one to three words; a value of its pattern in
the customer's latest message replaces those of their earlier ones), and the tool-call
constraint lets a call carry only one of those (bot.data.tool_schema). A value the customer
never gave, or one garbled on the way ("BBN2 9PR", "ls8 1pw ta"), can then not be written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from bot.data.schema import Action, Argument

SPAN_WORDS = 3  # longest run of words a grounded argument without a pattern may copy
MAX_VALUES = 200  # most values offered to one argument (the latest first)
EDGE_PUNCTUATION = ".,;:!?()[]{}\"'`<>"

# (action, argument, the values it may take): what one conversation offers to tool calls.
GroundedValues = tuple[tuple[str, str, tuple[str, ...]], ...]


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


def _leaves(value: Any) -> list[str]:
    """The text of every string and number in an action's result."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in _leaves(item)]
    if isinstance(value, list):
        return [text for item in value for text in _leaves(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def _texts(source: str) -> list[str]:
    """A message as it is; an action's result (JSON) as its values."""
    if source[:1] in "{[":
        try:
            return _leaves(json.loads(source))
        except ValueError:
            pass
    return [source]


def _spans(text: str) -> list[str]:
    words = [w.strip(EDGE_PUNCTUATION) for w in text.split()]
    words = [w for w in words if w]
    return [" ".join(words[i : i + n]) for n in range(1, SPAN_WORDS + 1) for i in range(len(words) - n + 1)]


def _matches(spec: Argument, text: str) -> list[str]:
    """Where the argument's pattern occurs in `text`, as written or in capitals (whichever fits
    the pattern), never inside a longer run of letters and digits."""
    found = []
    around = re.compile(rf"(?<![A-Za-z0-9])(?:{spec.pattern})(?![A-Za-z0-9])", re.IGNORECASE)
    for match in around.finditer(text):
        found += [v for v in dict.fromkeys((match.group(), match.group().upper())) if spec.fits_pattern(v)]
    return found


def candidates(spec: Argument, sources: Iterable[str], skipped: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """What a grounded argument may be in a conversation with `sources` (those in `skipped`
    left out), latest first: at most MAX_VALUES, so a long conversation is read back only as far
    as it takes to find them."""
    found: dict[str, None] = {}
    for source in reversed(list(sources)):
        if source in skipped:
            continue
        for text in _texts(source):
            for value in _matches(spec, text) if spec.pattern else _spans(text):
                if len(value) <= spec.max_chars:
                    found[value] = None
                    if len(found) == MAX_VALUES:
                        return tuple(found)
    return tuple(found)


def superseded(spec: Argument, said: list[str]) -> frozenset[str]:
    """The customer's earlier messages, when their latest one gives a value of the argument's
    kind (its pattern): the latest value replaces them, as a slot takes the last value given. A
    corrected postcode or account number is then the only one a call can carry; action results
    keep their values. Empty for an argument without a pattern (any words could be one)."""
    if not (spec.pattern and said and _matches(spec, said[-1])):
        return frozenset()
    return frozenset(said[:-1]) - {said[-1]}


def grounded_values(actions: dict[str, Action], sources: Iterable[str], said: Iterable[str] = ()) -> GroundedValues:
    """For each grounded argument that the conversation offers values to, those values. An
    argument it offers none stays free: the model writes it, and the grounding check that runs
    after (`ungrounded`) turns the call into a question to the customer. `said`: the customer's
    messages among `sources`, in order (a value in the latest one supersedes, see `superseded`)."""
    sources, said = list(sources), list(said)
    found: dict[tuple, tuple[str, ...]] = {}  # one search per kind of value (account_id is in 9 actions)
    offered = []
    for action_name, action in actions.items():
        for name, spec in action.arguments.items():
            if not (spec.grounded and spec.type == "string"):
                continue
            kind = (spec.pattern, spec.max_chars)
            if kind not in found:
                found[kind] = candidates(spec, sources, superseded(spec, said))
            if found[kind]:
                offered.append((action_name, name, found[kind]))
    return tuple(offered)
