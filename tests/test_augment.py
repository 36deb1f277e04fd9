"""`bot data augment`: the training dialogues rewritten in the shapes customers write, as drafts
that keep every bot step valid and that a person reviews before anything is trained on."""

from __future__ import annotations

import re
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
  - id: roaming-spain-price
    tags: [roaming]
    turns:
      - user: Hi, what does it cost to use my phone in Spain?
      - action: roaming_rates
        args: {country: Spain}
        result: {country: Spain, day_pass_price: 2.5}
      - bot: It's £2.50 a day in Spain, only on days you use your phone.
      - user: Lovely, thanks.
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
        actions = [t.get("action") for t in steps if "action" in t]
        if shape in ("two-requests", "mixed") and "roaming_rates" in actions:  # the other dialogue's request too
            # asked with the first message: before the bot's question for details, or after the details
            assert actions == (
                ["roaming_rates", "verify_customer"]
                if shape == "two-requests"
                else ["verify_customer", "roaming_rates"]
            )
            continue
        assert len(steps) == len(expected), shape
        assert [t.get("action") for t in steps] == [getattr(t, "action", None) for t in expected], shape
    same = variants(data, list(SHAPES), seed=3)
    assert [v.turns for v in same] == [v.turns for v in variants(data, list(SHAPES), seed=3)]  # deterministic


def _first_messages(project, text: str, shape: str) -> list[str]:
    """The first customer message of the dialogue `bill-asks-then-answers` given `text` as the
    customer's answer, rewritten in `shape` with seeds 0 to 19."""
    (project / "training_data" / "dialogues" / "bill.yml").write_text(
        DIALOGUE.replace("It's 51234567 and BN2 9PR.", text)
    )
    data = validate(settings_of(project))
    return [_only(variants(data, [shape], seed=seed), shape).turns[0]["user"] for seed in range(20)]


def test_details_first_puts_bare_details_before_or_after_the_request(project):
    firsts = _first_messages(project, "It's 51234567 and BN2 9PR.", "details-first")
    before = [f for f in firsts if f.endswith("Why is my bill so high this month?")]
    after = [f for f in firsts if f.startswith("Why is my bill so high this month? It's 51234567")]
    assert before and after and len(before) + len(after) == len(firsts)
    assert all(
        re.match(r"^(account|acc|account no )?\s?51234567\W+(postcode |pc )?bn2 9pr\W", f, re.I) for f in before
    )
    assert any("bn2 9pr" in f for f in before)  # some in lower case, as customers type them


def test_details_with_more_said_stay_after_the_request(project):
    firsts = _first_messages(project, "It's 51234567 and BN2 9PR, I moved there in March.", "details-first")
    assert all(f.startswith("Why is my bill so high this month? It's 51234567") for f in firsts)


DETAILS_GIVEN = DIALOGUE.replace(
    """      - user: Why is my bill so high this month?
      - bot: I can look into that. What's your account number and postcode?
      - user: It's 51234567 and BN2 9PR.
""",
    "      - user: Why is my bill so high this month? 51234567, BN2 9PR\n",
)


def test_two_requests_asks_another_dialogues_request_in_the_first_message(project):
    (project / "training_data" / "dialogues" / "bill.yml").write_text(DETAILS_GIVEN)
    data = validate(settings_of(project))
    variant = _only(variants(data, ["two-requests"]), "two-requests")
    first = variant.turns[0]["user"]
    assert (
        first.startswith("Why is my bill so high this month? 51234567, BN2 9PR. ")
        and "what does it cost to use my phone in Spain?" in first
    )
    assert "Hi," not in first  # the other customer's greeting is dropped
    steps = variant.turns[1:4]
    assert [t["action"] for t in steps[:2]] == ["verify_customer", "roaming_rates"]
    assert steps[2] == {
        "bot": "Thanks, Priya. Your bill went up because your discount ended. "
        "It's £2.50 a day in Spain, only on days you use your phone."
    }
    assert variant.turns[4:] == [{"user": "Ah, that explains it. Thanks for your help!"}, {"bot": "You're welcome."}]


def test_two_requests_puts_a_question_last_and_leaves_attacks_alone(project):
    asks = DETAILS_GIVEN.replace(
        "Your bill went up because your discount ended.", "Your discount ended. Shall I look for a cheaper plan?"
    )
    (project / "training_data" / "dialogues" / "bill.yml").write_text(asks)
    data = validate(settings_of(project))
    both = _only(variants(data, ["two-requests"]), "two-requests").turns[3]["bot"]
    assert both == (
        "Thanks, Priya. It's £2.50 a day in Spain, only on days you use your phone. "
        "Your discount ended. Shall I look for a cheaper plan?"
    )
    (project / "training_data" / "dialogues" / "bill.yml").write_text(
        asks.replace("tags: [billing]", "tags: [billing, adversarial]")
    )
    assert not [
        v
        for v in variants(validate(settings_of(project)), ["two-requests"])
        if v.source.id == "bill-asks-then-answers"
    ]


def test_a_rewrite_is_not_rewritten_again(project):
    tagged = DIALOGUE.replace("tags: [billing]", "tags: [billing, augmented]")
    (project / "training_data" / "dialogues" / "bill.yml").write_text(tagged)
    assert not [
        v for v in variants(validate(settings_of(project)), list(SHAPES)) if v.source.id == "bill-asks-then-answers"
    ]


def test_the_command_offers_every_shape():
    result = subprocess.run(
        [sys.executable, "-m", "bot", "data", "augment", "--help"], capture_output=True, text=True, check=True
    )
    offered = re.search(r"--shape \{([^}]*)\}", result.stdout).group(1).split(",")
    assert offered == list(SHAPES)


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
