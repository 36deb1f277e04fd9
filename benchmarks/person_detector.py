"""The person-request detector: how its threshold is chosen, and how it does on real messages.

1. Five-fold cross-validation on the project's own examples (the dialogues' customer turns and
   training_data/person_requests.yml): the lowest threshold, in steps of 0.05, whose false
   alarms stay at most 2%, which is the highest recall that does. That is how
   bot/data/person_classifier.py's THRESHOLD is chosen; this prints it.
2. The detector (classifier and the persona's patterns) on real customer messages from public
   data sets it never trains on (tests/data/person_requests_public.yml): recall and false alarms
   at the shipped threshold, against the patterns alone as the baseline.

    .venv/bin/python benchmarks/person_detector.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from machine import cpu_name
from sklearn.model_selection import StratifiedKFold

from bot.config import load_settings
from bot.data import person_classifier
from bot.data.profile import profile_of
from bot.data.project import validate

ROOT = Path(__file__).resolve().parent.parent
MAX_FALSE_ALARMS = 0.02


def cross_validated_threshold(examples) -> tuple[float, float, float]:
    """(threshold, recall, false alarms) under five-fold cross-validation."""
    texts = [e.text for e in examples]
    labels = np.array([e.asks for e in examples])
    scores = np.zeros(len(texts))
    for train, held in StratifiedKFold(5, shuffle=True, random_state=0).split(texts, labels):
        fitted = person_classifier.PersonRequestClassifier([examples[i] for i in train])
        scores[held] = [fitted.probability(texts[i]) for i in held]
    for threshold in np.round(np.arange(0.30, 0.951, 0.05), 2):
        false_alarms = float((scores[~labels] >= threshold).mean())
        if false_alarms <= MAX_FALSE_ALARMS:
            return float(threshold), float((scores[labels] >= threshold).mean()), false_alarms
    return 0.95, float((scores[labels] >= 0.95).mean()), float((scores[~labels] >= 0.95).mean())


def main() -> None:
    profile = profile_of(validate(load_settings(ROOT)))
    examples = list(profile.person_examples)
    threshold, cv_recall, cv_false = cross_validated_threshold(examples)
    print(f"machine: {cpu_name()}")
    print(f"examples: {sum(e.asks for e in examples)} asking for a person, {sum(not e.asks for e in examples)} not")
    print(
        f"cross-validated threshold: {threshold:.2f} (recall {cv_recall:.1%}, false alarms {cv_false:.1%}); "
        f"shipped THRESHOLD = {person_classifier.THRESHOLD}"
    )
    public = yaml.safe_load((ROOT / "tests" / "data" / "person_requests_public.yml").read_text(encoding="utf-8"))
    asks = [x["text"] for x in public["asks_for_a_person"]]
    others = [x["text"] for x in public["does_not"]]
    detector = profile.person_detector
    for name, says in (
        ("patterns alone (baseline)", detector.rule.asks_for_person),
        ("detector", detector.asks_for_person),
    ):
        caught, alarms = sum(map(says, asks)), sum(map(says, others))
        print(
            f"{name:26} recall {caught / len(asks):6.1%} ({caught} of {len(asks)}), "
            f"false alarms {alarms / len(others):5.1%} ({alarms} of {len(others)})"
        )


if __name__ == "__main__":
    main()
