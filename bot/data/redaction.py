"""Personal data out of conversations before anything is written: email addresses, phone
numbers, payment card numbers (Luhn-checked), UK postcodes, account and order numbers, and the
names customers give ("my name is ...") or actions return (`first_name`).

Each value found becomes a realistic placeholder of the same kind: a fake address at
example.com, a UK number from the range Ofcom keeps for drama (07700 900xxx), a well-known test
card number, a real-format postcode, an account or order number of the same shape, a name from a
list. One `Redactor` serves one conversation: the same value always gets the same placeholder,
whether it is in the customer's text, an action's arguments or its result, so the dialogue still
adds up (the validator's grounding check passes) and nothing of the original is left. The
placeholders are drawn at random (not derived from the values), so they can't be traced back.

The patterns are in config.yml (`redaction:`); `summary()` says how many different values of
each kind were replaced, never which.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import phonenumbers

from bot.config import RedactionConfig

KINDS = ("email", "card", "phone", "postcode", "account", "order", "name")
# Overlapping finds: the first kind here wins (an email's digits are not an account number).
PRIORITY = ("email", "card", "account", "order", "phone", "postcode", "name")

FIRST_NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Morgan",
    "Casey",
    "Robin",
    "Jamie",
    "Taylor",
    "Riley",
    "Avery",
    "Quinn",
    "Rowan",
    "Charlie",
    "Frankie",
    "Harper",
    "Elliot",
    "Kit",
    "Logan",
    "Reese",
    "Sasha",
    "Toni",
    "Drew",
    "Emery",
    "Finley",
)
SURNAMES = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Evans",
    "Walker",
    "Wright",
    "Hughes",
    "Green",
    "Hall",
    "Wood",
    "Clarke",
    "Turner",
    "Hill",
    "Cooper",
    "Ward",
    "Morris",
    "Baker",
    "Harris",
    "Carter",
    "Bennett",
    "Price",
    "Russell",
    "Mason",
)
# Card numbers published for testing payments: Luhn-valid, never a real customer's.
TEST_CARDS = (
    "4242424242424242",
    "4000056655665556",
    "5555555555554444",
    "2223003122003222",
    "5200828282828210",
    "5105105105105100",
    "6011111111111117",
    "6011000990139424",
    "3566002020360505",
    "378282246310005",
    "371449635398431",
    "30569309025904",
    "38520000023237",
    "4000002500003155",
    "4000000000003220",
)
POSTCODE_AREAS = (
    "LS",
    "M",
    "B",
    "BD",
    "S",
    "NE",
    "EH",
    "G",
    "CF",
    "BS",
    "L",
    "NG",
    "LE",
    "YO",
    "HU",
    "SO",
    "PL",
    "EX",
    "OX",
    "CB",
)
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
STOP_WORDS = {
    "and",
    "from",
    "here",
    "i",
    "im",
    "my",
    "the",
    "a",
    "please",
    "thanks",
    "thank",
    "but",
    "so",
    "on",
    "at",
    "with",
    "to",
    "is",
    "not",
    "in",
    "back",
    "later",
    "now",
    "again",
    "still",
    "also",
    "just",
    "really",
    "very",
}
# Capitalised words that follow "it's" or "this is" without being anyone's name.
NOT_NAMES = {
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "today",
    "tomorrow",
    "yesterday",
    "fine",
    "okay",
    "ok",
    "urgent",
    "important",
    "ridiculous",
    "done",
    "sorted",
    "broken",
    "me",
    "us",
    "him",
    "her",
    "them",
    "it",
}
NAME_WORD = r"[^\W\d_][\w'’-]*"


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _same_layout(template: str, digits: str) -> str:
    """`digits` written with the separators of `template` (4242 4242 ... or 4242-4242-...)."""
    out, it = [], iter(digits)
    for ch in template:
        out.append(next(it) if ch.isdigit() else ch)
    return "".join(out)


def _same_case(template: str, value: str) -> str:
    if template.islower():
        return value.lower()
    if template.isupper() and len(template) > 1:
        return value.upper()
    return value


def _phrase(words: str) -> str:
    """A configured phrase as a pattern: any spacing, either apostrophe."""
    return r"\s+".join(re.escape(w).replace("'", "['’]") for w in words.split())


class Redactor:
    """Redacts the texts and values of one conversation (see the module's docstring)."""

    def __init__(self, config: RedactionConfig, rng: random.Random | None = None):
        self.config = config
        self.rng = rng or random.SystemRandom()
        p = config.patterns
        self._patterns = {
            kind: re.compile(getattr(p, kind)) for kind in ("email", "card", "postcode", "account", "order")
        }
        # What makes the placeholder of a value each pattern finds.
        self._makers: dict[str, Callable[[str], str]] = {
            "email": self._email,
            "card": self._card,
            "postcode": self._postcode,
            "account": functools.partial(self._shaped, "account"),
            "order": functools.partial(self._shaped, "order"),
        }
        strong = "|".join(_phrase(w) for w in config.name_phrases) or r"(?!x)x"
        weak = "|".join(_phrase(w) for w in config.name_intros) or r"(?!x)x"
        self._said = re.compile(rf"(?i:\b(?:{strong}))\s+({NAME_WORD}(?:\s+{NAME_WORD})?)")
        capital = r"[A-Z][a-z'’-]+"
        self._introduced = re.compile(
            rf"(?i:\b(?:{weak}))\s+({capital}(?:\s+{capital})?)(?=\s*(?:$|[.,!?;:)]|\s(?:and|from|here)\b))"
        )
        self._placeholders: dict[tuple[str, str], str] = {}  # (kind, normalised value) -> placeholder
        self._originals: set[str] = set()
        self._names: dict[str, tuple[str, set[str]]] = {}  # name word (casefolded) -> (placeholder, forms seen)
        self._name_pattern: re.Pattern | None = None
        self._counts: Counter = Counter()

    # -- what was replaced -------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """Different values replaced, per kind (kinds with none left out)."""
        return {kind: self._counts[kind] for kind in KINDS if self._counts[kind]}

    # -- names: learnt from the whole conversation first, then replaced everywhere -----------
    def learn_names(self, texts: Iterable[str] = (), values: Iterable[Any] = ()) -> None:
        """Names the customer gave in `texts`, and the name fields of action arguments and results in `values`."""
        for text in texts:
            for match in self._said.finditer(text):
                words = match.group(1).split()
                while words and words[-1].casefold().strip("'’") in STOP_WORDS:
                    words.pop()
                if words and words[0].casefold() not in STOP_WORDS | NOT_NAMES:
                    self._add_name(words)
            for match in self._introduced.finditer(text):
                words = match.group(1).split()
                if words[0].casefold().strip("'’") not in NOT_NAMES:
                    self._add_name(words)
        for value in values:
            self._learn_fields(value)
        self._name_pattern = None

    def _learn_fields(self, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in self.config.name_fields and isinstance(item, str):
                    self._add_name(item.split(), surname=key == "last_name")
                else:
                    self._learn_fields(item)
        elif isinstance(value, list):
            for item in value:
                self._learn_fields(item)

    def _add_name(self, words: list[str], surname: bool = False) -> None:
        for i, word in enumerate(words):
            word = word.strip(".,!?;:'’")
            if len(word) < 2:
                continue
            key = word.casefold()
            if key not in self._names:
                choices = SURNAMES if surname or i > 0 else FIRST_NAMES
                used = {p for p, _ in self._names.values()}
                other_names = [n for n in choices if n.casefold() != key]
                free = [n for n in other_names if n not in used] or other_names
                self._names[key] = (self.rng.choice(free), set())
                self._counts["name"] += 1
            self._names[key][1].update({word, word[:1].upper() + word[1:]})

    def _name_spans(self, text: str) -> list[tuple[int, int, str]]:
        if not self._names:
            return []
        if self._name_pattern is None:
            forms = sorted({f for _, seen in self._names.values() for f in seen}, key=len, reverse=True)
            self._name_pattern = re.compile(r"(?<![\w'’])(" + "|".join(re.escape(f) for f in forms) + r")(?![\w])")
        spans = []
        for m in self._name_pattern.finditer(text):
            placeholder = self._names[m.group(1).casefold()][0]
            spans.append((m.start(), m.end(), _same_case(m.group(1), placeholder)))
        return spans

    # -- everything else: found in each text ---------------------------------------------------
    def _unique(self, kind: str, key: str, make: Callable[[], str]) -> str:
        """The placeholder of this value: drawn the first time, then always the same."""
        if (kind, key) not in self._placeholders:
            taken = set(self._placeholders.values()) | self._originals
            for _ in range(100):
                candidate = make()
                if candidate not in taken:
                    break
            self._placeholders[(kind, key)] = candidate
            self._counts[kind] += 1
        self._originals.add(key)
        return self._placeholders[(kind, key)]

    def _email(self, found: str) -> str:
        def make():
            first, last = self.rng.choice(FIRST_NAMES).lower(), self.rng.choice(SURNAMES).lower()
            return f"{first}.{last}{self.rng.randint(1, 99)}@example.{self.rng.choice(('com', 'org', 'net'))}"

        return self._unique("email", found.casefold(), make)

    def _card(self, found: str) -> str:
        digits = _digits(found)

        def make():
            same_length = [c for c in TEST_CARDS if len(c) == len(digits)]
            if same_length and self.rng.random() < 0.9:
                return self.rng.choice(same_length)
            body = "400000" + "".join(self.rng.choice("0123456789") for _ in range(len(digits) - 7))
            return body + next(d for d in "0123456789" if luhn_valid(body + d))

        return _same_layout(found, self._unique("card", digits, make))

    def _phone(self, found: str, number) -> str:
        key = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        local = self._unique("phone", key, lambda: f"7700900{self.rng.randint(0, 999):03d}")
        spaced = " " in found.strip()
        if found.lstrip().startswith("+"):
            return f"+44 {local[:4]} {local[4:]}" if spaced else f"+44{local}"
        return f"0{local[:4]} {local[4:]}" if spaced else f"0{local}"

    def _postcode(self, found: str) -> str:
        def make():
            outward = f"{self.rng.choice(POSTCODE_AREAS)}{self.rng.randint(1, 20)}"
            inward = f"{self.rng.randint(0, 9)}{self.rng.choice(INWARD_LETTERS)}{self.rng.choice(INWARD_LETTERS)}"
            return f"{outward} {inward}"

        placeholder = self._unique("postcode", re.sub(r"\s+", "", found).upper(), make)
        if " " not in found:
            placeholder = placeholder.replace(" ", "")
        return placeholder.lower() if found.islower() else placeholder

    def _shaped(self, kind: str, found: str) -> str:
        """An account or order number of the same shape: letters and separators kept, digits drawn."""

        def make():
            out = []
            for i, ch in enumerate(found):
                if ch.isdigit():
                    out.append(self.rng.choice("123456789" if i == 0 and ch != "0" else "0123456789"))
                else:
                    out.append(ch)
            return "".join(out)

        return self._unique(kind, found.upper(), make)

    def _phones(self, text: str) -> list[tuple[int, int, Callable[[], str]]]:
        """Phone numbers the phonenumbers library finds: valid ones, or possible ones written as
        phone numbers (from + or 0, at least 9 digits), such as 07700 900123."""
        spans = []
        for m in phonenumbers.PhoneNumberMatcher(
            text, self.config.phone_region, leniency=phonenumbers.Leniency.POSSIBLE
        ):
            raw, number = m.raw_string, m.number
            written_as_phone = raw.lstrip().startswith(("+", "0")) and len(str(number.national_number)) >= 9
            if phonenumbers.is_valid_number(number) or written_as_phone:
                spans.append((m.start, m.end, lambda raw=raw, number=number: self._phone(raw, number)))
        return spans

    def _spans(self, text: str) -> dict[str, list[tuple[int, int, Callable[[], str]]]]:
        """Every value found, by kind: (start, end, what makes its placeholder)."""
        found: dict[str, list] = {kind: [] for kind in PRIORITY}
        for kind, pattern in self._patterns.items():
            make = self._makers[kind]
            for m in pattern.finditer(text):
                if kind != "card" or luhn_valid(_digits(m.group())):
                    found[kind].append((m.start(), m.end(), functools.partial(make, m.group())))
        found["phone"] = self._phones(text)
        found["name"] = [(start, end, lambda p=p: p) for start, end, p in self._name_spans(text)]
        return found

    def text(self, text: str) -> str:
        """`text` with every value found replaced by its placeholder."""
        if not text:
            return text
        taken: list[tuple[int, int, Callable[[], str]]] = []
        spans = self._spans(text)
        for kind in PRIORITY:
            for start, end, make in spans[kind]:
                if all(end <= s or start >= e for s, e, _ in taken):
                    taken.append((start, end, make))
        out, at = [], 0
        for start, end, make in sorted(taken, key=lambda t: t[0]):
            out += [text[at:start], make()]
            at = end
        return "".join(out) + text[at:]

    def value(self, value: Any, key: str | None = None) -> Any:
        """A JSON value (an action's arguments or result) with every text in it redacted; a name
        field's text is a name, whatever it looks like."""
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        if isinstance(value, str):
            if key in self.config.name_fields:
                self._add_name(value.split(), surname=key == "last_name")
                self._name_pattern = None
            return self.text(value)
        return value


LABELS = {
    "email": ("email address", "email addresses"),
    "card": ("card number", "card numbers"),
    "phone": ("phone number", "phone numbers"),
    "postcode": ("postcode", "postcodes"),
    "account": ("account number", "account numbers"),
    "order": ("order or reference number", "order or reference numbers"),
    "name": ("name", "names"),
}


def describe(summary: dict[str, int]) -> str:
    """'1 email address, 2 account numbers' (never the values); 'nothing found' when empty."""
    return ", ".join(f"{n} {LABELS[kind][n != 1]}" for kind, n in summary.items()) or "nothing found"
