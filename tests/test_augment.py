"""`bot data augment`: the training dialogues rewritten in the shapes customers write, as drafts
that keep every bot step valid and that a person reviews before anything is trained on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import make_project, settings_of

from bot.data.project import validate
from bot.data.schema import ActionTurn, UserTurn
from bot.pipelines import drafts
from bot.pipelines.augment import SHAPES, UnknownShape, variants

ROOT = Path(__file__).resolve().parent.parent
DIALOGUE = """dialogues:
  - id: bill-asks-then-answers
    tags: [billing]
    turns:
      - user: Why is my bill so high this month?
      - bot: I can look into that. What's your account number and postcode?
      - user: It's 51234567 and BN2 9PR.
      - action: verify_customer
        args: {account_id: "51234567", postcode: BN2 9PR}
        result: {verified: true, first_name: Priya}
      - bot: Thanks, Priya. Your bill went up because your discount ended.
      - user: Ah, that explains it. Thanks for your help!
      - bot: You're welcome.
"""


@pytest.fixture
def project(tmp_path, cache_dir):
    folder = make_project(tmp_path / "p", cache_dir)
    for name in ("persona.yml", "actions.yml"):
        (folder / "training_data" / name).write_text((ROOT / "training_data" / name).read_text())
    (folder / "training_data" / "dialogues" / "bill.yml").write_text(DIALOGUE)
    return folder


def _only(found, shape):
    return next(v for v in found if v.shape == shape and v.source.id == "bill-asks-then-answers")


def test_details_first_joins_the_answer_to_the_question_before(project):
    data = validate(settings_of(project))
    variant = _only(variants(data, ["details-first"]), "details-first")
    assert variant.turns[0] == {"user": "Why is my bill so high this month? It's 51234567 and BN2 9PR."}
    assert "action" in variant.turns[1]  # the bot's question is gone: the call comes straight away
    source = next(d for d in data.train if d.id == "bill-asks-then-answers")
    assert len(variant.turns) == len(source.turns) - 2  # the question and the separate answer


def test_every_shape_keeps_the_values_and_the_bot_steps(project):
    data = validate(settings_of(project))
    source = next(d for d in data.train if d.id == "bill-asks-then-answers")
    bot_steps = [t for t in source.turns if not isinstance(t, UserTurn)]
    for shape in SHAPES:
        variant = _only(variants(data, [shape]), shape)
        users = " ".join(t["user"] for t in variant.turns if "user" in t)
        assert "51234567" in users and "BN2 9PR" in users, shape  # never garbled
        steps = [t for t in variant.turns if "user" not in t]
        expected = bot_steps if shape not in ("details-first", "mixed") else bot_steps[1:]
        assert len(steps) == len(expected), shape
        assert [t.get("action") for t in steps] == [getattr(t, "action", None) for t in expected], shape
    same = variants(data, list(SHAPES), seed=3)
    assert [v.turns for v in same] == [v.turns for v in variants(data, list(SHAPES), seed=3)]  # deterministic


def test_augmented_drafts_are_valid_reviewed_and_never_tests(project):
    settings = settings_of(project)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "-C",
            str(project),
            "data",
            "augment",
            "--shape",
            "details-first",
            "--shape",
            "typos",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "details-first:" in result.stdout and "(valid)" in result.stdout
    assert drafts.draft_names(settings) == ["augment-details-first", "augment-typos"]
    before = len(validate(settings).train)  # drafts are never trained on
    with pytest.raises(drafts.DraftRefused, match="can't go into the tests"):
        drafts.accept(settings, "augment-typos", "tests")
    accepted = drafts.accept(settings, "augment-details-first", "dialogues")
    text = accepted.read_text()
    assert "draft: true" not in text and not text.startswith("# Training dialogues rewritten")
    data = validate(settings)
    assert len(data.train) > before
    calls = [t for d in data.train if "details-first" in d.tags for t in d.turns if isinstance(t, ActionTurn)]
    assert calls  # and every one passed the grounding check of validate()


def test_an_unknown_shape_is_named(project):
    with pytest.raises(UnknownShape, match="unknown shape 'typo'"):
        variants(validate(settings_of(project)), ["typo"])
