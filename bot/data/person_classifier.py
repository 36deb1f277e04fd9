"""Does a customer's message ask for a person? Learned from examples, as Rasa learns an intent:
the customer turns of the dialogues (answered with a handoff in a dialogue tagged
`human-request`: yes; answered any other way: no) and `training_data/person_requests.yml`.

The classifier is scikit-learn's logistic regression over TF-IDF character n-grams (2 to 5
letters inside words, so "persn", "agnet" and "humna" share most of their features with the
words they misspell) and word n-grams (1 to 3 words, so "talk to" and "a person" count
together). Fitting it takes a fraction of a second, so it is fitted where it is used, from the
examples the model was trained with (kept in its profile): no pickled object to load.

The persona's patterns (bot.data.person_requests) stay as an extra: a message either one says
asks for a person is handed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from bot.data.person_requests import PersonRequestRule, normalize
from bot.data.schema import HandoffTurn, PersonExample, TrainingData, UserTurn

HUMAN_REQUEST_TAG = "human-request"  # dialogues whose handoffs answer a request for a person
# The classifier's probability from which a message asks for a person: chosen by five-fold
# cross-validation on the starter examples, the highest recall that kept false alarms at most 2%
# (benchmarks/person_detector.py prints it).
THRESHOLD = 0.55


def dialogue_examples(data: TrainingData) -> list[PersonExample]:
    """The customer turns of the training dialogues, labelled by what the bot did next. A turn
    answered with a handoff outside a `human-request` dialogue is left out: the bot handed over
    for another reason (a decision only a person may take)."""
    found = []
    for dialogue in data.train:
        turns = dialogue.turns
        for turn, after in zip(turns, turns[1:] + (None,), strict=True):
            if not isinstance(turn, UserTurn):
                continue
            handoff = isinstance(after, HandoffTurn)
            if handoff and HUMAN_REQUEST_TAG not in dialogue.tags:
                continue
            found.append(PersonExample(turn.user, handoff))
    return found


def training_examples(data: TrainingData) -> tuple[PersonExample, ...]:
    """Everything the classifier learns from, each distinct text once (the file wins)."""
    listed = data.person_examples
    chosen: dict[str, PersonExample] = {}
    for example in dialogue_examples(data) + list(listed):
        chosen[normalize(example.text)] = example
    return tuple(chosen.values())


class PersonRequestClassifier:
    """Fitted on `examples`; needs at least one of each label."""

    def __init__(self, examples: Sequence[PersonExample]):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        labels = [e.asks for e in examples]
        if all(labels) or not any(labels):
            raise ValueError("the person-request classifier needs examples that ask for a person and that don't")
        features = make_union(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, preprocessor=normalize),
            TfidfVectorizer(analyzer="word", ngram_range=(1, 3), sublinear_tf=True, preprocessor=normalize),
        )
        classifier = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000)
        self.pipeline = make_pipeline(features, classifier)
        self.pipeline.fit([e.text for e in examples], labels)

    def probability(self, message: str) -> float:
        """How likely `message` asks for a person, 0 to 1."""
        return float(self.pipeline.predict_proba([message])[0][1])


@lru_cache(maxsize=8)
def fitted(examples: tuple[PersonExample, ...]) -> PersonRequestClassifier | None:
    """The classifier of `examples` (fitted once per set: profiles of one model share it); None
    without examples of both labels."""
    labels = {e.asks for e in examples}
    return PersonRequestClassifier(examples) if labels == {True, False} else None


@dataclass(frozen=True)
class PersonRequestDetector:
    """The classifier, with the persona's patterns as an extra."""

    examples: tuple[PersonExample, ...]
    rule: PersonRequestRule

    @cached_property
    def classifier(self) -> PersonRequestClassifier | None:
        return fitted(self.examples)

    def asks_for_person(self, message: str) -> bool:
        if not message.strip():
            return False
        if self.rule.asks_for_person(message):
            return True
        return self.classifier is not None and self.classifier.probability(message) >= THRESHOLD
