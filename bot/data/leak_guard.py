"""The leak guard: no text that reaches a customer may repeat the bot's instructions.

Built from the model's profile (bot.data.profile): its system prompt, the persona's `secret` and
the replies the bot was taught. Two rules:

- **A run of the system prompt:** 8 or more consecutive words of the prompt, compared as words
  (letter case, accents, punctuation, spacing and apostrophes aside: "DON'T  repeat" is
  "dont repeat"). A run is allowed when every 8-word window of it appears in a reply the bot was
  taught (`BotProfile.taught_replies`), so the guard never cuts a reply from the training data.
- **The secret:** its letters and digits in order, whatever is between them (case, spaces,
  punctuation: "s.i.l.v.e.r heron-CANARY"), anywhere. Always, taught or not.

`LeakGuard.find(text)` checks a whole text. `LeakGuard.stream()` checks a reply as it is written
and releases it piece by piece, holding back only what a leak could still grow out of: the
newest words while they are a sequence of the prompt (at most 7, so usually none or one), and
the tail of the text while it spells the start of the secret.

Encoded, both rules still hold: a reply is also read in ROT13, and every run of 16 or more
base64 or hex characters in it is decoded and checked (a leak found so has `encoding` set).
While a reply is streamed, a word that could be the start of such a run (8 or more of those
characters) is held until it ends.

Not caught, by design: a paraphrase, a translation, other encodings (letters swapped for
look-alikes, spelled backwards) or the prompt spread over several replies; the adversarial
training data is what teaches the model to refuse those.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.data.schema import DEFAULT_REFUSAL

RUN_WORDS = 8  # a run this long (or longer) of the system prompt never reaches a customer
MIN_SECRET_CHARS = 6  # letters and digits a secret needs, so that matching it in any spacing cuts nothing else

PROMPT, SECRET = "prompt", "secret"

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_APOSTROPHES = "'’"
_NO_APOSTROPHES = str.maketrans("", "", _APOSTROPHES)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")  # standard and URL-safe alphabets
_HEX_RUN = re.compile(r"(?:[0-9A-Fa-f]{2}){8,}")
_CODE_TAIL = re.compile(r"[A-Za-z0-9+/_=-]{8,}$")  # may still grow into a run to decode: held
ROT13 = "rot13"


@dataclass(frozen=True)
class Leak:
    """What a text would have leaked (never the text itself)."""

    kind: str  # PROMPT or SECRET
    encoding: str | None = None  # "base64", "hex" or "rot13" when the leak was encoded


def fold(text: str) -> str:
    """Letter case, accents and compatibility forms (full-width letters, ligatures) folded away."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[tuple[str, int, int]]:
    """Each word of `text`, folded and without apostrophes, with where it starts and ends."""
    return [(fold(m.group()).translate(_NO_APOSTROPHES), m.start(), m.end()) for m in _WORD.finditer(text)]


def letters(text: str) -> tuple[str, list[int]]:
    """The letters and digits of `text`, folded, and the index in `text` each comes from."""
    if text.isascii():
        low = text.lower()
        origins = [i for i, c in enumerate(low) if c.isalnum()]
        return "".join(low[i] for i in origins), origins
    chars, origins = [], []
    for i, ch in enumerate(text):
        for c in fold(ch):
            if c.isalnum():
                chars.append(c)
                origins.append(i)
    return "".join(chars), origins


def _base64_bytes(run: str) -> bytes:
    """A base64 run (standard or URL-safe alphabet, its padding stripped) decoded."""
    standard = run.replace("-", "+").replace("_", "/")
    padding = "=" * (-len(run) % 4)
    return base64.b64decode(standard + padding)


def decodings(text: str) -> Iterable[tuple[str, str]]:
    """(encoding, decoded text) for each base64 or hex run in `text` that decodes to text."""
    for encoding, pattern in (("hex", _HEX_RUN), ("base64", _BASE64_RUN)):
        for m in pattern.finditer(text):
            run = m.group().rstrip("=")
            try:
                raw = bytes.fromhex(run) if encoding == "hex" else _base64_bytes(run)
            except (ValueError, binascii.Error):
                continue
            decoded = raw.decode("utf-8", errors="ignore")
            if decoded.isprintable() or sum(c.isprintable() or c.isspace() for c in decoded) >= 0.9 * len(decoded):
                yield encoding, decoded


def strings_in(value: Any) -> Iterable[str]:
    """Every string, number and key in a JSON-like value (a tool call's arguments)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)
    elif value is not None:
        yield str(value)


class LeakGuard:
    def __init__(
        self, system_prompt: str, secret: str = "", taught_replies: Iterable[str] = (), refusal: str = DEFAULT_REFUSAL
    ):
        prompt = [w for w, _, _ in words(system_prompt)]
        taught = set()
        for reply in taught_replies:
            said = [w for w, _, _ in words(reply)]
            taught.update(tuple(said[i : i + RUN_WORDS]) for i in range(len(said) - RUN_WORDS + 1))
        every_run = {tuple(prompt[i : i + RUN_WORDS]) for i in range(len(prompt) - RUN_WORDS + 1)}
        self.runs = every_run - taught
        self.taught_runs = len(every_run & taught)  # windows of the prompt that taught replies say
        # Sequences of the prompt shorter than a run: a reply that ends in one may still grow into a run.
        self.sequences = {tuple(prompt[i : i + n]) for n in range(1, RUN_WORDS) for i in range(len(prompt) - n + 1)}
        self.word_starts = {w[:k] for w in prompt for k in range(1, len(w) + 1)}
        self.secret = letters(secret)[0]
        # what the customer gets instead of a leak
        refusal_leaks = bool(self.find(refusal))
        self.refusal = DEFAULT_REFUSAL if refusal_leaks else refusal

    @classmethod
    def of(cls, profile) -> LeakGuard:
        """The guard for a model's profile (bot.data.profile.BotProfile)."""
        return cls(profile.system_prompt, profile.secret, profile.taught_replies or (), profile.refusal)

    def find(self, text: str) -> Leak | None:
        """The leak in a whole text, if any."""
        return self.scan(text, final=True)[0]

    def find_in(self, value: Any) -> Leak | None:
        """The leak in a JSON-like value (a tool call's arguments, a message with buttons)."""
        return self.find("\n".join(strings_in(value)))

    def stream(self) -> StreamGuard:
        return StreamGuard(self)

    def scan(self, text: str, final: bool) -> tuple[Leak | None, int]:
        """The leak in `text`, and where the part that may still become one starts (len(text):
        nothing need be held back). Unless `final`, the text may go on, so its last word may be
        unfinished. `text` must start at the start of a word or between words. Read as it is,
        in ROT13 (which keeps every letter in its place), and with its encoded runs decoded."""
        leak, hold = self._scan_plain(text, final)
        if leak:
            return leak, 0
        leak, rot_hold = self._scan_plain(codecs.encode(text, ROT13), final)
        if leak:
            return Leak(leak.kind, ROT13), 0
        for encoding, decoded in decodings(text):
            if leak := self._scan_plain(decoded, True)[0]:
                return Leak(leak.kind, encoding), 0
        hold = min(hold, rot_hold)
        if not final and (tail := _CODE_TAIL.search(text)):
            hold = min(hold, tail.start())
        return None, hold

    def _scan_plain(self, text: str, final: bool) -> tuple[Leak | None, int]:
        found = words(text)
        partial = None
        if not final and found and found[-1][2] == len(text.rstrip(_APOSTROPHES)):
            partial = found.pop()  # it may go on: "Conf" of "Confidential"
        said = [w for w, _, _ in found]
        if any(tuple(said[i : i + RUN_WORDS]) in self.runs for i in range(len(said) - RUN_WORDS + 1)):
            return Leak(PROMPT), 0
        chars, origins = letters(text) if self.secret else ("", [])
        if self.secret and self.secret in chars:
            return Leak(SECRET), 0
        hold = len(text)
        if partial is None or partial[0] in self.word_starts:  # else no word of the prompt starts here: no run goes on
            # The newest complete words that could be the first 7 of a run: an unfinished word
            # may finish it with no new word at all.
            k = next((k for k in range(min(RUN_WORDS - 1, len(said)), 0, -1) if tuple(said[-k:]) in self.sequences), 0)
            hold = found[-k][1] if k else partial[1] if partial else len(text)
        if self.secret:
            j = self._secret_start_length(chars)
            if j:
                hold = min(hold, origins[len(chars) - j])
        return None, hold

    def _secret_start_length(self, chars: str) -> int:
        """The length of the longest beginning of the secret (short of all of it) that `chars`
        ends with; 0 for none."""
        longest = min(len(self.secret) - 1, len(chars))
        return next((j for j in range(longest, 0, -1) if chars.endswith(self.secret[:j])), 0)


class StreamGuard:
    """One reply as it is written: `feed` each piece and show what it returns, `flush` at the
    end. Once `leak` is set nothing more comes out: stop the generation."""

    def __init__(self, guard: LeakGuard):
        self.guard = guard
        self.text = ""
        self.base = 0  # where the next scan starts: no leak still to come can begin before it
        self.released = 0  # how much of the text was shown
        self.leak: Leak | None = None

    def feed(self, piece: str) -> str:
        if self.leak or not piece:
            return ""
        self.text += piece
        return self._advance(final=False)

    def flush(self) -> str:
        """The rest of the reply, once it is complete (unless it leaks)."""
        return "" if self.leak else self._advance(final=True)

    def _advance(self, final: bool) -> str:
        # Only the held text and the new piece are scanned: what was released is no part of any
        # leak still to come (if it were, it would have been held).
        leak, hold = self.guard.scan(self.text[self.base :], final)
        if leak:
            self.leak = leak
            return ""
        upto = len(self.text) if final else self.base + hold
        shown = self.text[self.released : upto]
        self.released = max(self.released, upto)
        base = upto
        while base > self.base and (self.text[base - 1].isalnum() or self.text[base - 1] in _APOSTROPHES):
            base -= 1  # a scan starts at the start of a word, never inside one
        self.base = base
        return shown
