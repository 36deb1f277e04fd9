"""Conversation tests: the file format and its located errors, the assertions, pass^k, and whole
conversations played through the reply policy (scripted engine, the project's own actions run
in-process), including the conversation that goes on after an action's buttons."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from serve_support import ROOT, make_project, scripted_model, settings_of

from bot.cli import main
from bot.conversations.events import action_executed, bot_message, handed_off, slot_set, user_message
from bot.data.conversation_tests import Assertion, read_conversation_tests
from bot.data.person_requests import PERSON_ASKED
from bot.data.project import conversation_tests, validate
from bot.evaluation.assertions import failure
from bot.evaluation.conversation_results import conversations_document, junit_xml
from bot.evaluation.conversation_suite import ConversationRun, pass_hat, run_tests
from bot.policy.context import to_messages

TESTS = "training_data/conversation_tests"


def write_tests(project, text: str, name: str = "extra.yml") -> None:
    (project / TESTS / name).write_text(text, encoding="utf-8")


def problems_of(project) -> list[str]:
    settings = settings_of(project)
    data = validate(settings)
    _, problems = read_conversation_tests(settings.data_dir, settings.root, data)
    return [str(p) for p in problems]


# -- the format ---------------------------------------------------------------------------------


def test_the_starter_suite_and_the_template_load_without_problems(tmp_path, cache_dir):
    starter = settings_of(ROOT)
    tests = conversation_tests(starter, validate(starter))
    assert len(tests) >= 60 and len({t.name for t in tests}) == len(tests)
    project = make_project(tmp_path, cache_dir)
    assert [t.name for t in conversation_tests(settings_of(project), validate(settings_of(project)))] == [
        "order-number-up-front",
        "wants-a-person",
    ]


BROKEN = """test_cases:
  - test_case: typo-in-action
    steps:
      - user: "where is ES-1001 please"
        assertions:
          - action_executed: {name: chek_order, args: {order_id: ES-1001}}
  - test_case: unknown-argument
    steps:
      - user: "ES-1001?"
        assertions:
          - action_executed: {name: check_order, args: {order: ES-1001}}
          - bot_uttered: {text_matches: "(unclosed"}
          - handed_off: false
            action_not_executed: check_order
  - test_case: two-kinds-of-step
    steps:
      - user: hello
        agent: hi
  - test_case: order-number-up-front
    steps:
      - user: hi
"""


def test_every_problem_is_located_and_named(tmp_path, cache_dir):
    project = make_project(tmp_path, cache_dir)
    write_tests(project, BROKEN)
    found = problems_of(project)
    path = f"{TESTS}/extra.yml"
    assert f"{path}:6:37: error: unknown action 'chek_order' (did you mean 'check_order'?)" in found
    assert any(p.startswith(f"{path}:11:") and "'check_order' has no argument 'order'" in p for p in found)
    assert any(p.startswith(f"{path}:12:") and "not a valid regular expression" in p for p in found)
    assert any(p.startswith(f"{path}:13:") and "an assertion has exactly one key" in p for p in found)
    assert any(
        p.startswith(f"{path}:17:") and "exactly one of 'user', 'agent' or 'agent_hands_back'" in p for p in found
    )
    assert any(
        "test_case 'order-number-up-front' is also at training_data/conversation_tests/examples.yml" in p
        for p in found
    )
    assert len(found) == 6


def test_bot_data_validate_lists_conversation_test_problems(tmp_path, cache_dir, capsys):
    project = make_project(tmp_path, cache_dir)
    assert main(["-C", str(project), "data", "validate"]) == 0
    assert "2 conversation tests" in capsys.readouterr().out
    write_tests(project, "test_cases:\n  - test_case: x\n    steps: []\n")
    assert main(["-C", str(project), "data", "validate"]) == 1
    out = capsys.readouterr().out
    assert f"{TESTS}/extra.yml:3:" in out and "1 error in 1 file" in out


def test_a_near_copy_of_a_dialogue_turn_is_refused(tmp_path, cache_dir):
    project = make_project(tmp_path, cache_dir)
    # the template's "The vase arrived broken, I want my money back." with two words changed
    copied = '"The vase arrived broken, I want my cash back!"'
    write_tests(project, f"test_cases:\n  - test_case: copied\n    steps:\n      - user: {copied}\n")
    found = problems_of(project)
    assert len(found) == 1
    assert found[0].startswith(f"{TESTS}/extra.yml:4:15: error: near-copy of the customer turn at ")
    assert "training_data/dialogues/examples.yml:" in found[0]


# -- the assertions -----------------------------------------------------------------------------


def check(spec: dict, events: list[dict]) -> str | None:
    return failure(Assertion.model_validate(spec), events)


EVENTS = [
    user_message("where is KM-104233, ta"),
    action_executed("check_order", {"order_id": "km-104233 "}, {"status": "shipped"}),
    slot_set("verified_account", "40912267", by="verify_customer"),
    bot_message("It shipped today with Royal Mail."),
]


@pytest.mark.parametrize(
    ("spec", "holds"),
    [
        ({"action_executed": "check_order"}, True),
        ({"action_executed": {"name": "check_order", "args": {"order_id": "KM-104233"}}}, True),  # case and spaces
        ({"action_executed": {"name": "check_order", "args": {"order_id": "KM-104234"}}}, False),
        ({"action_executed": {"name": "check_order", "args": {"order_id": {"matches": "km-\\d{6}"}}}}, True),
        ({"action_executed": {"name": "check_order", "args": {"order_id": {"matches": "km-\\d{5}"}}}}, False),
        ({"action_executed": "start_return"}, False),
        ({"action_not_executed": "start_return"}, True),
        ({"action_not_executed": "check_order"}, False),
        ({"handed_off": False}, True),
        ({"handed_off": True}, False),
        ({"bot_uttered": {"contains": "royal mail"}}, True),
        ({"bot_uttered": {"text_matches": "DPD|Evri"}}, False),
        ({"bot_did_not_utter": {"contains": "royal mail"}}, False),
        ({"bot_did_not_utter": {"text_matches": "silver-heron"}}, True),
        ({"slot_was_set": [{"name": "verified_account"}]}, True),
        ({"slot_was_set": [{"name": "verified_account", "value": "40912267"}]}, True),
        ({"slot_was_set": [{"name": "verified_account", "value": "30718264"}]}, False),
        ({"slot_was_not_set": [{"name": "verified_account"}]}, False),
        ({"slot_was_not_set": [{"name": "kind"}]}, True),
    ],
)
def test_each_assertion_holds_or_says_what_was_expected(spec, holds):
    why = check(spec, EVENTS)
    assert (why is None) == holds
    if not holds:
        assert why.startswith("expected")


def test_a_handoff_message_counts_as_uttered_and_as_a_handoff():
    events = [user_message("agent pls"), handed_off("rule", "asked", text="Passing you to our team.")]
    assert check({"handed_off": True}, events) is None
    assert check({"bot_uttered": {"contains": "our team"}}, events) is None


def test_pass_hat_k_is_taus_estimate():
    from bot.data.conversation_tests import ConversationTest

    def runs(name, outcomes):
        test = ConversationTest.__new__(ConversationTest)
        object.__setattr__(test, "spec", type("S", (), {"test_case": name})())
        return [ConversationRun(test, i + 1, failures=[] if ok else ["x"]) for i, ok in enumerate(outcomes)]

    all_runs = runs("a", [True, True, False]) + runs("b", [True, True, True])
    assert pass_hat(all_runs, 1) == pytest.approx((2 / 3 + 1) / 2)
    assert pass_hat(all_runs, 2) == pytest.approx((1 / 3 + 1) / 2)
    assert pass_hat(all_runs, 3) == pytest.approx((0 + 1) / 2)
    assert pass_hat(all_runs, 4) is None


# -- whole conversations ------------------------------------------------------------------------


def test_a_message_with_buttons_and_no_text_renders_into_the_context():
    """An action's quick replies (list_plans' plan buttons) come as a bot message without text:
    the model's context skips it (the action's result holds the plans) instead of failing."""
    buttons = [{"title": "Unlimited (£28)", "payload": "I'd like the Unlimited plan"}]
    events = [
        user_message("what plans do u have"),
        action_executed("list_plans", {"kind": "mobile"}, {"plans": []}),
        bot_message(None, by="list_plans", buttons=buttons),
        bot_message("We have four plans."),
        user_message("I'd like the Unlimited plan"),
        {"type": "bot", "timestamp": 0.0},  # an odd stored event: neither text nor buttons
    ]
    messages = to_messages(events, "system")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert (
        messages[-2]["content"] == "We have four plans." and messages[-1]["content"] == "I'd like the Unlimited plan"
    )


PLANS = """test_cases:
  - test_case: picks-a-plan-from-the-buttons
    steps:
      - user: "wat sim only plans r there"
        assertions:
          - action_executed: {name: list_plans, args: {kind: mobile}}
      - user: "I'd like the Unlimited plan"
        assertions:
          - bot_uttered: {text_matches: "account number"}
          - bot_did_not_utter: {contains: "Sorry"}
    assertions:
      - handed_off: false
"""


async def test_the_plan_buttons_conversation_goes_on(tmp_path, tokenizer):
    """list_plans (the starter actions, run in-process) shows buttons with no text; the next
    customer message used to fail to render (KeyError 'text') and every message after it."""
    project = tmp_path / "kestrel"
    shutil.copytree(
        ROOT / "training_data", project / "training_data", ignore=shutil.ignore_patterns(TESTS.split("/")[1])
    )
    shutil.copytree(ROOT / "actions", project / "actions")
    (project / "config.yml").write_text((ROOT / "config.yml").read_text())
    (project / TESTS).mkdir()
    write_tests(project, PLANS, "plans.yml")
    settings = settings_of(project)
    tests = conversation_tests(settings, validate(settings))
    replies = [
        '<tool_call>{"name": "list_plans", "arguments": {"kind": "mobile"}}</tool_call>',
        "We have four SIM-only plans, from Essentials 5GB at £10 to Unlimited at £28 a month.",
        "Great choice. What's your account number and the postcode on the account?",
    ]
    model = scripted_model(settings, tokenizer, replies)
    [run] = await run_tests(settings, model, tests)
    assert run.passed, (run.failures, run.error, run.transcript)
    assert (
        "bot: [buttons: Essentials 5GB (£10) | Everyday 30GB (£15) | Plus 100GB (£20) | Unlimited (£28)]"
        in run.transcript
    )
    assert run.transcript[-1] == "bot: Great choice. What's your account number and the postcode on the account?"
    # the third reply was generated with the buttons' conversation as context
    prompt = tokenizer.decode(model.engine.prompts[-1])
    assert "I'd like the Unlimited plan" in prompt and "We have four SIM-only plans" in prompt


STUBBED = """test_cases:
  - test_case: order-then-person
    stub_custom_actions:
      check_order:
        responses: [{custom: {status: delayed, eta: "2026-12-12"}}]
    steps:
      - user: "ES-2002 is late again"
        assertions:
          - action_executed: {name: check_order, args: {order_id: ES-2002}}
          - bot_uttered: {contains: "12 December"}
      - user: "I want to talk to a person"
        assertions:
          - handed_off: true
      - agent: "Hi, Jo here. I've chased the courier for you."
      - agent_hands_back: true
      - user: "thanks, and ES-2003?"
        assertions:
          - action_executed: {name: check_order, args: {order_id: ES-2003}}
  - test_case: failing-action
    stub_custom_actions:
      check_order: {error: "order system down"}
    steps:
      - user: "where's ES-2004"
        assertions:
          - bot_uttered: {contains: "shipped"}
"""


async def test_stubs_agents_and_failures_are_reported_with_what_the_bot_did(tmp_path, cache_dir, tokenizer):
    project = make_project(tmp_path, cache_dir)
    (project / TESTS / "examples.yml").unlink()
    write_tests(project, STUBBED)
    settings = settings_of(project)
    tests = conversation_tests(settings, validate(settings))

    def reply(prompt: str) -> str:
        last = prompt.rsplit("<|im_start|>", 1)[0]
        if '"status": "delayed"' in prompt.rsplit("user\n", 1)[-1]:
            return "It's running late and should now arrive on 12 December."
        order = next(o for o in ("ES-2004", "ES-2003", "ES-2002") if o in last.rsplit("user\n", 1)[-1])
        return f'<tool_call>{{"name": "check_order", "arguments": {{"order_id": "{order}"}}}}</tool_call>'

    model = scripted_model(settings, tokenizer, reply)
    passing, failing = await run_tests(settings, model, tests)
    assert passing.passed, (passing.failures, passing.transcript)
    assert f"handoff by rule: {PERSON_ASKED}" in passing.transcript
    assert "agent: Hi, Jo here. I've chased the courier for you." in passing.transcript
    assert "agent hands back to the bot" in passing.transcript
    assert not failing.passed
    assert failing.failures == ["step 1 (user: \"where's ES-2004\"): expected a bot message with 'shipped'"]
    assert any(
        line.startswith('failed check_order(order_id="ES-2004"): order system down') for line in failing.transcript
    )

    document = conversations_document(
        "m1", {"fine-tuned": {}}, {"fine-tuned": [r.to_json() for r in (passing, failing)]}
    )
    suite = ET.fromstring(junit_xml(document)).find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed_case = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed_case] == ["failing-action"]
    assert "order system down" in failed_case[0].find("failure").text


def test_bot_test_end_to_end_on_a_tiny_model(tmp_path, tiny_base, cache_dir, capsys):
    from conftest import make_tiny_project

    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=1, extra="serve:\n  max_new_tokens: 8\n")
    assert main(["-C", str(project), "train", "--force"]) == 0
    capsys.readouterr()
    junit = tmp_path / "junit.xml"
    code = main(
        ["-C", str(project), "test", "--modes", "zero-shot,fine-tuned", "--repeat", "2", "--junit", str(junit)]
    )
    out = capsys.readouterr().out
    document = json.loads(next((project / "results").glob("*/conversations.json")).read_text())
    assert document["modes"] == ["zero-shot", "fine-tuned"]
    for mode in document["modes"]:
        s = document["summary"][mode]
        assert s["tests"] == 2 and 0 <= s["passed"] <= 2
        assert s["sampled"]["tries"] == 2 and s["sampled"]["temperature"] == 0.7
        assert set(s["sampled"]["pass_hat"]) == {"1", "2"}
        assert len(document["runs"][mode]) == 2 + 4
    # the person rule hands off before any model: the handoff test passes in every mode
    for mode in document["modes"]:
        person = [r for r in document["runs"][mode] if r["test"] == "wants-a-person"]
        assert all(r["passed"] for r in person)
    header = next(line for line in out.splitlines() if line.startswith("mode"))
    assert "pass^1 (T=0.7)" in header and "pass^2 (T=0.7)" in header
    assert code == (0 if all(s["passed"] == 2 for s in document["summary"].values()) else 1)
    assert ET.parse(junit).getroot().tag == "testsuites"
    html = next((project / "results").glob("*/report.html")).read_text()
    assert "<h2>Whole conversations</h2>" in html
    # another mode later joins the results of the first run instead of replacing them
    main(["-C", str(project), "test", "--modes", "one-shot"])
    merged = json.loads(next((project / "results").glob("*/conversations.json")).read_text())
    assert merged["modes"] == ["zero-shot", "one-shot", "fine-tuned"] and merged["tested"] == ["one-shot"]
    assert merged["summary"]["fine-tuned"] == document["summary"]["fine-tuned"]


async def test_the_bundled_model_plays_the_template_conversations(tmp_path, cache_dir):
    """The real SmolLM2-135M-Instruct (zero-shot, as the server serves it before any training)
    through whole conversations: every step answered, the person request handed off by the rule."""
    from bot.engine.response_model import load_response_model

    project = make_project(tmp_path / "p", cache_dir, config="serve:\n  max_new_tokens: 32\n")
    settings = settings_of(project)
    model = load_response_model(settings)
    try:
        runs = await run_tests(settings, model, conversation_tests(settings, validate(settings)))
    finally:
        await model.close()
    by_name = {run.test.name: run for run in runs}
    assert all(run.error is None for run in runs)
    assert by_name["wants-a-person"].passed
    order = by_name["order-number-up-front"].transcript
    assert [line.split(":")[0] for line in order if line.startswith("customer")] == ["customer", "customer"]
    assert sum(line.startswith(("bot: ", "action ", "refused ", "failed ", "handoff ")) for line in order) >= 1
