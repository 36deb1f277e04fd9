"""Does a customer's message ask for a person? The persona's patterns: an extra beside the
learned classifier (bot.data.person_classifier), which decides with them before the model
answers, so that a customer who asks for a person gets one: a 135M model alone missed
"I want to speak to a person". The model's own handoff calls still count.

The persona's `asking_for_a_person` section holds regular expressions. They match the message
lower-cased, with accents and punctuation removed, and with small typos mended: a word of four
or more letters that is one slip away from a word the patterns use ("persn", "humna", "agnet")
is read as that word. `{name}` in a pattern stands for the `words` entry of that name, so a list
of ways to say "a person" is written once. `unless` patterns blank out what they match first
("human readable", "per person"), so another sense of a word never counts.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from bot.data.schema import PersonRequests

PERSON_ASKED = "The customer asked for a person."  # the handoff's reason when this rule decides
MIN_TYPO_WORD = 4  # shorter words are too easily one letter from another word
TYPO_SIMILARITY = 0.8  # difflib ratio: one slip in a five-letter word is 0.8


def normalize(text: str) -> str:
    """Lower case, no accents, letters, digits and apostrophes only, single spaces."""
    plain = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    plain = plain.replace("\u2019", "'")
    return " ".join(re.sub(r"[^a-z0-9']+", " ", plain).split())


def last_user_text(messages: list[dict]) -> str:
    """The customer message the next bot step answers, in OpenAI-format messages: '' when the
    step follows an action's result instead (the rule decides only right after a customer)."""
    return (messages[-1].get("content") or "") if messages and messages[-1]["role"] == "user" else ""


@dataclass(frozen=True)
class PersonRequestRule:
    patterns: tuple[str, ...]
    unless: tuple[str, ...] = ()
    words: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, config: PersonRequests) -> PersonRequestRule:
        return cls(tuple(config.patterns), tuple(config.unless), tuple(config.words.items()))

    def _expand(self, pattern: str) -> str:
        for name, alternatives in self.words:
            pattern = pattern.replace("{" + name + "}", f"(?:{alternatives})")
        return pattern

    @cached_property
    def _compiled(self) -> tuple[list[re.Pattern], list[re.Pattern]]:
        patterns = [re.compile(self._expand(p)) for p in self.patterns]
        unless = [re.compile(self._expand(p)) for p in self.unless]
        return (patterns, unless)

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """The words the patterns spell out: what a typo is mended towards. Never the words of
        `unless`: mending "contact" into "contract" would blank out "contact an agent"."""
        source = " ".join(self.patterns + tuple(alt for _, alt in self.words))
        return frozenset(w for w in re.findall(r"[a-z]+", source) if len(w) >= MIN_TYPO_WORD)

    def _mend(self, word: str) -> str:
        if len(word) < MIN_TYPO_WORD or word in self.vocabulary:
            return word
        for known in difflib.get_close_matches(word, self.vocabulary, n=3, cutoff=TYPO_SIMILARITY):
            # One slip, not another form of the word: "manage" is not a typo of "manager".
            one_slip = known[0] == word[0] and abs(len(known) - len(word)) <= 1
            other_form = known.startswith(word) or word.startswith(known)
            if one_slip and not other_form:
                return known
        return word

    def read(self, message: str) -> str:
        """The message as the patterns see it."""
        return " ".join(self._mend(w) for w in normalize(message).split())

    def asks_for_person(self, message: str) -> bool:
        if not self.patterns:
            return False
        patterns, unless = self._compiled
        text = f" {self.read(message)} "
        for pattern in unless:
            text = pattern.sub(" ", text)
        return any(p.search(text) for p in patterns)

    def problems(self) -> list[tuple[str, int, str]]:
        """(section, index, error) for each pattern that is not a valid regular expression."""
        found = []
        for section, patterns in (("patterns", self.patterns), ("unless", self.unless)):
            for k, pattern in enumerate(patterns):
                try:
                    re.compile(self._expand(pattern))
                except re.error as e:
                    found.append((section, k, str(e)))
        return found
