"""Asking for a person, learned: the classifier trained from the dialogues and
training_data/person_requests.yml, measured on real customer messages from public data sets
(tests/data/person_requests_public.yml) that nobody here wrote and that it never trains on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from serve_support import make_project, settings_of

from bot.data.person_classifier import THRESHOLD, dialogue_examples, training_examples
from bot.data.person_requests import PersonRequestRule, normalize
from bot.data.profile import BotProfile, profile_of, trained_profile
from bot.data.project import validate
from bot.data.schema import PersonRequests
from bot.errors import InvalidFiles

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = yaml.safe_load((ROOT / "tests" / "data" / "person_requests_public.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def starter_profile():
    from bot.config import load_settings

    return profile_of(validate(load_settings(ROOT)))


def test_the_public_messages_are_not_trained_on(starter_profile):
    trained = {normalize(e.text) for e in starter_profile.person_examples}
    public = [x["text"] for x in PUBLIC["asks_for_a_person"] + PUBLIC["does_not"]]
    assert len(public) >= 500 and {s["licence"] for s in PUBLIC["sources"]}
    assert [m for m in public if normalize(m) in trained] == []


def test_real_requests_for_a_person_are_caught(starter_profile):
    """Measured on this file (benchmarks/person_detector.py): recall 96.3% (182 of 189), false
    alarms 2.4% (10 of 414). The target is recall 95% and false alarms 2%: the false alarms miss
    it. The floors here stop a change from making either worse."""
    detector = starter_profile.person_detector
    asks = [x["text"] for x in PUBLIC["asks_for_a_person"]]
    others = [x["text"] for x in PUBLIC["does_not"]]
    recall = sum(map(detector.asks_for_person, asks)) / len(asks)
    false_alarms = sum(map(detector.asks_for_person, others)) / len(others)
    assert recall >= 0.95, f"recall {recall:.1%}"
    assert false_alarms <= 0.025, f"false alarms {false_alarms:.1%}"
    rule_recall = sum(map(detector.rule.asks_for_person, asks)) / len(asks)
    assert recall - rule_recall >= 0.3  # the patterns alone catch about half


def test_a_typo_is_never_mended_into_a_word_that_blanks_the_message():
    """ "contact" is one slip from "contract", a word of an `unless` pattern: mending it made
    "help me contact an agent" read "help me contract an agent", and then no request at all."""
    rule = PersonRequestRule.of(
        PersonRequests(patterns=[r"\bcontact an agent\b"], unless=[r"\b(?:my|the) contract\b"])
    )
    assert rule.read("could you help me contact an agent?") == "could you help me contact an agent"
    assert rule.asks_for_person("could you help me contact an agent?")
    assert not rule.asks_for_person("what's left on the contract")


def test_dialogue_turns_are_labelled_by_what_the_bot_did_next(starter_profile):
    from bot.config import load_settings

    data = validate(load_settings(ROOT))
    examples = {e.text: e.asks for e in dialogue_examples(data)}
    assert examples["can i talk to a real persn pls"] is True  # human-request dialogue, then a handoff
    assert examples["Hi there."] is False
    # a handoff for another reason (not a human-request dialogue) teaches neither label
    assert all(e.asks is False or e.text in examples for e in dialogue_examples(data))
    assert len(training_examples(data)) == len(starter_profile.person_examples)


def test_the_examples_travel_with_the_model(tmp_path, starter_profile):
    kept = BotProfile.from_json(starter_profile.to_json())
    assert kept.person_examples == starter_profile.person_examples
    probability = kept.person_detector.classifier.probability("could I speak with an advisor please")
    assert probability >= THRESHOLD
    # a model trained before profiles kept them: the project's examples stand in
    older = starter_profile.to_json() | {"person_examples": None}
    (tmp_path / "profile.json").write_text(__import__("json").dumps(older))
    assert trained_profile(tmp_path, lambda: starter_profile).person_examples == starter_profile.person_examples


def test_a_bad_examples_file_is_a_located_error(tmp_path, cache_dir):
    project = make_project(tmp_path / "p", cache_dir)
    (project / "training_data" / "person_requests.yml").write_text(
        "asks_for_a_person:\n  - talk to a human\n  - ''\ndoes_not: hello\nexampels: []\n"
    )
    with pytest.raises(InvalidFiles) as error:
        validate(settings_of(project))
    text = str(error.value)
    assert "person_requests.yml:4:" in text or "person_requests.yml:5:" in text
    assert "exampels" in text
