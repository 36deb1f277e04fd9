"""Stop strings over streamed text: generation ends at the first stop string to appear, and the
text sent excludes it. A piece may end with the start of a stop string, so that much is held back
until the next piece says whether the stop string completes (as vLLM does for its stream)."""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""  # the end of the text so far that may be the start of a stop string
        self.seen = ""  # every piece fed, joined: the text generated (for counting its tokens)
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, piece: str) -> str:
        """The text that may go out now. Once `matched` is set, generation should end: the text
        returned ends just before the stop string."""
        self.seen += piece
        text = self.held + piece
        found = [(at, i) for i, stop in enumerate(self.stops) if (at := text.find(stop)) >= 0]
        if found:
            at, i = min(found)  # the first to appear; of two at the same place, the first listed
            self.matched, self.held = self.stops[i], ""
            return text[:at]
        keep = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, at the end of the generation (no stop string completed it)."""
        held, self.held = self.held, ""
        return held
