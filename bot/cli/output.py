"""The CLI's plain-text tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], *, left: int = 1, rule: bool = True) -> str:
    """`rows[0]` is the header. The first `left` columns are aligned left, the others right
    (numbers); columns are two spaces apart, and a rule of dashes under the header unless
    `rule` is False. Lines carry no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        aligned = [v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(aligned).rstrip()

    lines = [line(row) for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def say(message: str) -> None:
    """A progress message on stderr (stdout keeps what a script would read)."""
    print(message, file=sys.stderr, flush=True)


def percent(value: float | None) -> str:
    """A share as a whole percentage, "-" when there is none."""
    return "-" if value is None else f"{value:.0%}"
