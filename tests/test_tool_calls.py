"""Tool calls that can't be malformed, arguments that can't be invented, and a customer who asks
for a person getting one: the grammar and the constraint on a real (tiny) model, the served bot
with a scripted model, and the validator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import llguidance
import pytest
import torch
import yaml
from serve_support import chat, make_project, settings_of, stored_events

from bot.data.compiler import tool_call_message
from bot.data.schema import DEFAULT_HANDOFF_OFFER, HANDOFF_REASON_MAX_CHARS, HANDOFF_TOOL
from bot.data.tool_schema import tool_call_grammar, tool_call_schema
from bot.engine.batch_engine import BatchingEngine
from bot.engine.constraint import ToolCallConstraint
from bot.engine.protocol import Decoding, Finished, Sampling
from bot.engine.weights import call_constraint, load_weights
from bot.policy.context import handoff_unprompted
from bot.policy.reply import COULD_NOT_DO
from bot.rendering import parse_reply, prompt_ids

ROOT = Path(__file__).resolve().parent.parent
OFFERED = DEFAULT_HANDOFF_OFFER
PHRASINGS = yaml.safe_load((ROOT / "tests" / "data" / "asking_for_a_person.yml").read_text())


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def starter_project(tmp_path, cache_dir):
    """The template project with the starter persona and actions (the rule, `from: conversation`)."""
    project = make_project(tmp_path / "p", cache_dir)
    for name in ("persona.yml", "actions.yml"):
        (project / "training_data" / name).write_text((ROOT / "training_data" / name).read_text())
    return project


def shown(events) -> str:
    """Everything a customer's widget received: streamed tokens and whole messages."""
    return "".join(data.get("text") or "" for name, data in events if name in ("token", "message"))


# -- the grammar -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def starter_actions(tmp_path_factory):
    from bot.data.project import validate

    return validate(settings_of(starter_project(tmp_path_factory.mktemp("g"), tmp_path_factory.mktemp("c")))).actions


def accepts(tokenizer, actions, text: str) -> bool:
    constraint = ToolCallConstraint(tokenizer, actions, len(tokenizer))
    matcher = constraint.template.deep_copy()
    return matcher.consume_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]) and matcher.is_accepting()


def test_the_grammar_takes_declared_calls_only(tokenizer, starter_actions):
    assert accepts(tokenizer, starter_actions, call("get_bill", account_id="52093817"))
    assert accepts(tokenizer, starter_actions, call("get_bill", account_id="52093817", month="2026-04"))
    assert accepts(tokenizer, starter_actions, "\n" + call("handoff_to_human", reason="Wants a refund."))
    assert not accepts(tokenizer, starter_actions, call("delete_account", account_id="52093817"))  # undeclared
    assert not accepts(tokenizer, starter_actions, call("get_bill", acount_id="52093817"))  # misspelt argument
    assert not accepts(tokenizer, starter_actions, call("get_bill"))  # a required argument missing
    # not in the enum
    assert not accepts(tokenizer, starter_actions, call("start_return", order_id="KM-1", reason="bored"))
    assert not accepts(
        tokenizer, starter_actions, call("handoff_to_human", reason="x" * (HANDOFF_REASON_MAX_CHARS + 1))
    )


def test_a_call_asked_for_without_the_handoff_may_be_any_action_but_the_handoff(tokenizer, starter_actions):
    constraint = ToolCallConstraint(tokenizer, starter_actions, len(tokenizer))
    for text, taken in (
        (call("check_order", order_id="KM-120448"), True),
        (call("handoff_to_human", reason="x"), False),
    ):
        matcher = constraint.follow(forced=True, excluded=(HANDOFF_TOOL,)).matcher
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (matcher.consume_tokens(ids) and matcher.is_accepting()) is taken, text
    assert constraint.follow(forced=True).matcher.consume_tokens(
        tokenizer(call("handoff_to_human", reason="x"), add_special_tokens=False)["input_ids"]
    )


def test_the_schema_is_plain_json_schema_for_a_remote_server(starter_actions):
    schema = tool_call_schema(starter_actions)
    json.dumps(schema)  # what vLLM's structured output takes must be JSON
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == list(starter_actions) + ["handoff_to_human"]
    reason = schema["anyOf"][-1]["properties"]["arguments"]["properties"]["reason"]
    assert reason == {"type": "string", "maxLength": HANDOFF_REASON_MAX_CHARS}
    assert llguidance.LLMatcher.validate_grammar(tool_call_grammar(starter_actions)) == ""  # compiles, no error


# -- the constraint on a real model ----------------------------------------------------------------
def tiny_starter_engine(tmp_path, cache_dir, tiny_base):
    """The starter actions on a random-weight model: its weights, and a batching engine with the
    tool-call constraint (every call fits: at most 64 characters a value, about 200 tokens)."""
    project = starter_project(tmp_path, cache_dir)
    (project / "config.yml").write_text(
        (project / "config.yml").read_text().replace("base: bundled", f"base: {tiny_base}")
    )
    weights = load_weights(settings_of(project), None)
    constraint = call_constraint(weights.model, weights.tokenizer, weights.profile.actions)
    return weights, BatchingEngine(
        weights.model, weights.tokenizer, max_length=1024, max_batch=4, constraint=constraint
    )


async def test_a_tiny_model_forced_to_call_writes_a_declared_call(tmp_path, cache_dir, tiny_base, tokenizer):
    """Random weights would never write a valid call by chance: every row of the batch does."""
    weights, engine = tiny_starter_engine(tmp_path, cache_dir, tiny_base)
    actions = weights.profile.actions
    system = {"role": "system", "content": weights.profile.system_prompt}
    questions = ["where is my order", "my bill is wrong", "no signal in LS6 2AB"]

    async def reply(question: str, forced: bool) -> Finished:
        ids = prompt_ids(weights.tokenizer, [system, {"role": "user", "content": question}])
        async for item in engine.stream(ids, 400, Decoding(tool_call=forced)):
            if isinstance(item, Finished):
                return item

    try:
        forced = await asyncio.gather(*(reply(q, True) for q in questions))
        free = await asyncio.gather(*(reply(q, False) for q in questions[:2]))
    finally:
        await engine.close()
    for result in forced:
        step = parse_reply(result.text)
        assert result.finish_reason == "stop", result.text  # closed the call, then the end-of-turn token
        assert step.action in set(actions) | {"handoff_to_human"} and step.broken_call is None, result.text
        assert not weights.profile.argument_problems(step.action, step.arguments) or step.handoff
    assert all(not parse_reply(r.text).action for r in free)  # unforced random text stays free text


@pytest.mark.parametrize("engine_kind", ["batching", "serial"])
async def test_a_text_only_reply_cannot_open_a_call(tmp_path, cache_dir, tiny_base, engine_kind):
    """A model pushed to start every reply with the tool-call tag (a bias on the tag's first token):
    free, it starts a call; text only (the policy's last step), its first visible token is text."""
    from bot.data.prompt import TOOL_CALL_OPEN
    from bot.engine.serial import SerialEngine

    weights, engine = tiny_starter_engine(tmp_path, cache_dir, tiny_base)
    tokenizer = weights.tokenizer
    tag = tokenizer(TOOL_CALL_OPEN, add_special_tokens=False)["input_ids"]
    bias = weights.model.lm_head.register_forward_hook(
        lambda module, args, out: out.index_add(
            -1, torch.tensor([tag[0]]), torch.full((*out.shape[:-1], 1), 1e4, dtype=out.dtype)
        )
    )
    if engine_kind == "serial":
        await engine.close()
        engine = SerialEngine(weights.model, tokenizer, max_length=1024, constraint=engine.constraint)
    system = {"role": "system", "content": weights.profile.system_prompt}
    ids = prompt_ids(tokenizer, [system, {"role": "user", "content": "where is my order"}])

    async def reply(text_only: bool) -> Finished:
        async for item in engine.stream(ids, 12, Decoding(text_only=text_only)):
            if isinstance(item, Finished):
                return item

    try:
        free, text = await reply(False), await reply(True)
    finally:
        await engine.close()
        bias.remove()
    assert free.token_ids[0] == tag[0] and free.text.startswith(TOOL_CALL_OPEN[:1])
    assert text.token_ids[0] != tag[0] and not text.text.lstrip().startswith("<"), text.text
    starts = engine.constraint.text_starts
    assert not starts[tag[0]] and starts[tokenizer("Hello", add_special_tokens=False)["input_ids"][0]]


# -- the served bot -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('<tool_call>{"name": "check_order", "arguments": {"order_id": "KM-10', COULD_NOT_DO),  # stopped mid-call
        # bad JSON
        (
            '<tool_call>{"name": "check_order", "arguments": {"order_id": KM-104233}}</tool_call>',
            COULD_NOT_DO,
        ),
        # a broken handoff is the model's handoff: unasked and unoffered, it is an offer of a person
        ('<tool_call>{"name": "handoff_to_human", "arguments": {"reason": "Customer asked for KM-120448 (KM', OFFERED),
        ('Let me look that up. <tool_call>{"name": "check_order"', "Let me look that up."),
    ],
)
async def test_a_broken_call_never_reaches_the_customer(tmp_path, cache_dir, serve, reply, expected):
    client, _ = await serve(starter_project(tmp_path, cache_dir), [reply, reply, reply])
    events = await chat(client, "b1", "where's my order KM-104233?")
    assert "tool_call" not in shown(events) and "{" not in shown(events)
    log = await stored_events(client, "b1")
    assert [d["text"] for n, d in events if n == "message"] == [expected]
    if expected == COULD_NOT_DO:
        assert [e["type"] for e in log] == ["user", "action_failed", "bot"] and "malformed" in log[1]["error"]

    # the OpenAI-compatible route, streaming and not: no markup in any content either
    for stream in (False, True):
        body = {
            "model": "bot",
            "messages": [{"role": "user", "content": "where's my order KM-104233?"}],
            "stream": stream,
        }
        answer = await (await client.post("/v1/chat/completions", json=body)).text()
        assert "tool_call" not in answer.replace('"tool_calls"', "") and "KM-10'" not in answer


async def test_the_model_hands_over_unasked_only_after_offering_a_person(tmp_path, cache_dir, serve):
    """A handoff out of the blue ("ta" after a finished task) makes the policy ask the model
    again with the handoff ruled out: its text is not shown, the bot offers a person instead,
    and the customer's yes, answered with the model's handoff, gets one. A call of an action in
    the second answer goes ahead only if it acts on what the customer has just written (a
    corrected order number); its text is never shown."""
    handoff = call("handoff_to_human", reason="Customer wants the roaming charge refunded.")
    replies = [
        "You're welcome!",
        handoff,
        call("check_order", order_id="KM-104233"),  # asked again: a call on nothing "brill, ta" says
        handoff,
        handoff,
        call("check_order", order_id="KM-120448"),  # asked again: a call on the number just given, which runs
    ]
    client, model = await serve(starter_project(tmp_path, cache_dir), replies)
    await chat(client, "o1", "what does roaming cost in spain")
    events = await chat(client, "o1", "brill, ta")
    assert [(d["type"], d["text"]) for n, d in events if n == "message"] == [("bot", OFFERED)]
    log = await stored_events(client, "o1")
    assert log[-1]["by"] == "handoff_offer" and not any(e["type"] == "handoff" for e in log)

    events = await chat(client, "o1", "yes please")
    assert [d["type"] for n, d in events if n == "message"] == ["handoff"]
    log = await stored_events(client, "o1")
    assert (log[-1]["type"], log[-1]["by"], log[-1]["reason"]) == (
        "handoff",
        "model",
        "Customer wants the roaming charge refunded.",
    )
    assert len(model.engine.prompts) == 4  # the second try after "ta"; the yes needed none

    await chat(client, "o2", "argh sorry, KM-120448")
    log = await stored_events(client, "o2")
    assert [e["type"] for e in log][:2] == ["user", "action_failed"]  # sent (nothing listens on port 9)
    assert log[1]["name"] == "check_order" and log[1]["arguments"] == {"order_id": "KM-120448"}


@pytest.mark.parametrize(
    ("said", "unprompted"),
    [
        (None, True),  # the first message
        ("There's no outage near LS8 1PW.", True),
        ("I can't refund that myself, but a colleague can. Shall I pass you over?", False),
        ("I can put you through to our team if you'd like.", False),
        (DEFAULT_HANDOFF_OFFER, False),
        (COULD_NOT_DO, False),
    ],
)
def test_a_handoff_is_unprompted_unless_a_person_was_offered(said, unprompted):
    messages = [{"role": "system", "content": "You are Wren."}, {"role": "user", "content": "hi"}]
    if said:
        messages.append({"role": "assistant", "content": said})
    messages.append({"role": "user", "content": "yes"})
    assert handoff_unprompted(messages) is unprompted
    # after an action's result, the model's handoff answers what the action found
    result = [tool_call_message("call_1", "verify_customer", {}), {"role": "tool", "content": "{}"}]
    assert handoff_unprompted(messages + result) is False


async def test_an_invented_account_number_is_never_sent(tmp_path, cache_dir, serve):
    """The model makes up an account number: the call is not sent, the customer is asked for it."""
    replies = [
        call("get_account", account_id="40912267"),
        call("check_order", order_id="KM-104233"),
        call("check_order", order_id="KM-104233"),
        "It's on its way.",
    ]
    client, model = await serve(starter_project(tmp_path, cache_dir), replies)
    events = await chat(client, "g1", "What's my balance? My postcode is M14 5RT.")
    assert [d["text"] for n, d in events if n == "message"] == [
        "To do that I need your account number. Could you tell me, please?"
    ]
    log = await stored_events(client, "g1")
    assert [e["type"] for e in log] == ["user", "action_rejected", "bot"]
    assert log[1]["reason"] == "ungrounded" and "'account_id' \"40912267\" appears nowhere" in log[1]["problems"][0]
    # asked again without get_account (the conversation holds no account number): its call of
    # check_order takes nothing the customer wrote, and a postcode given means words won't do
    assert len(model.engine.prompts) == 2 and model.engine.excluded[1] == (HANDOFF_TOOL, "get_account")

    # a value the customer gave (in another letter case) is grounded: the call goes to the action server
    events = await chat(client, "g2", "where is order km-104233")
    # sent (nothing listens)
    assert [e["type"] for e in await stored_events(client, "g2")][:2] == [
        "user",
        "action_failed",
    ]


async def test_held_out_phrasings_are_handed_off_before_the_model(tmp_path, cache_dir, serve):
    asks, others = PHRASINGS["asks"], PHRASINGS["does_not_ask"]
    assert len(asks) >= 20 and len(others) >= 20
    client, model = await serve(starter_project(tmp_path, cache_dir), lambda prompt: "Happy to help.")
    handed_off = {}
    for k, message in enumerate(asks + others):
        events = await chat(client, f"h{k}", message)
        handed_off[message] = [d["type"] for n, d in events if n == "message"] == ["handoff"]
    missed = [m for m in asks if not handed_off[m]]
    false = [m for m in others if handed_off[m]]
    assert (missed, false) == ([], [])
    assert len(model.engine.prompts) == len(others)  # the model never saw a request for a person
    log = await stored_events(client, "h0")
    assert log[-1]["by"] == "rule" and log[-1]["reason"] == "The customer asked for a person."


# -- the validator ----------------------------------------------------------------------------------
def test_the_validator_flags_an_argument_the_dialogue_never_gave(tmp_path, cache_dir):
    from bot.data.project import validate
    from bot.errors import InvalidFiles

    project = starter_project(tmp_path, cache_dir)
    (project / "training_data" / "dialogues" / "invented.yml").write_text(
        "dialogues:\n"
        "  - id: invented-order\n"
        "    turns:\n"
        "      - user: where is my parcel?\n"
        "      - action: check_order\n"
        "        args: {order_id: KM-555555}\n"
        "        result: {status: dispatched}\n"
        "      - bot: It's on its way.\n"
    )
    with pytest.raises(InvalidFiles) as error:
        validate(settings_of(project))
    assert "dialogues/invented.yml:6:" in str(error.value)
    assert "'order_id' \"KM-555555\" appears nowhere before this call" in str(error.value)


def test_a_bad_pattern_is_a_located_error(tmp_path, cache_dir):
    from bot.data.project import validate
    from bot.errors import InvalidFiles

    project = starter_project(tmp_path, cache_dir)
    persona = project / "training_data" / "persona.yml"
    persona.write_text(persona.read_text().replace("  patterns:\n", '  patterns:\n    - "speak to (a person"\n', 1))
    with pytest.raises(InvalidFiles) as error:
        validate(settings_of(project))
    assert "persona.yml" in str(error.value) and "not a valid regular expression" in str(error.value)


# -- grounded values: copied, not generated ---------------------------------------------------------
def test_grounded_values_are_what_the_conversation_holds(starter_actions):
    from bot.data.grounding import grounded_values

    sources = [
        "hi its 51234567 and ls8 1pw ta",  # details first, lower case, "ta" stuck on
        '{"verified": true, "orders": ["KM-104233"], "phone": "512345678"}',  # an action's result
        "order km-118230 as well. 512345679 is my old number",
    ]
    offered = {(action, argument): values for action, argument, values in grounded_values(starter_actions, sources)}
    assert offered["verify_customer", "account_id"] == ("51234567",)  # never inside a longer number
    assert offered["verify_customer", "postcode"] == ("LS8 1PW",)  # in the capitals the pattern wants
    assert offered["check_order", "order_id"] == ("KM-118230", "KM-104233")  # the latest first
    assert ("list_plans", "kind") not in offered  # an enum, not grounded
    assert grounded_values(starter_actions, ["where is my parcel?"]) == ()  # nothing offered: left free


def test_a_value_the_customer_corrects_replaces_the_earlier_one(starter_actions):
    from bot.data.grounding import grounded_values

    said = ["can I see my bill? 40288163, LS8 1PQ", "oops, it's LS8 1PW"]
    result = '{"verified": false}'
    offered = dict(((a, n), v) for a, n, v in grounded_values(starter_actions, [said[0], result, said[1]], said))
    assert offered["verify_customer", "postcode"] == ("LS8 1PW",)  # the correction, not the typo
    assert offered["verify_customer", "account_id"] == ("40288163",)  # not corrected: still there
    # No customer messages named: every value stays, as before.
    plain = dict(((a, n), v) for a, n, v in grounded_values(starter_actions, [said[0], result, said[1]]))
    assert plain["verify_customer", "postcode"] == ("LS8 1PW", "LS8 1PQ")
    # An action's result keeps its values; a latest message without a value of the kind supersedes nothing.
    later = ["order KM-104233 please", "and what's my balance"]
    sources = [later[0], '{"orders": ["KM-118230"]}', later[1]]
    offered = dict(((a, n), v) for a, n, v in grounded_values(starter_actions, sources, later))
    assert offered["check_order", "order_id"] == ("KM-118230", "KM-104233")
    corrected = ["order KM-104233 please", '{"orders": ["KM-118230"]}', "sorry, KM-104223"]
    offered = dict(((a, n), v) for a, n, v in grounded_values(starter_actions, corrected, corrected[::2]))
    assert offered["check_order", "order_id"] == ("KM-104223", "KM-118230")


def test_a_plan_code_is_copied_from_the_plans_on_sale(tokenizer, starter_actions):
    """The catalogue changes: a code remembered from training (BB-FULL-900) can't be sent when
    list_plans returned another (B-900); neither can a code the customer's words only suggest."""
    from bot.data.grounding import grounded_values

    plans = '{"plans": [{"code": "B-500", "name": "Full Fibre 500"}, {"code": "B-900", "name": "Full Fibre 900"}]}'
    sources = ["40288163 LS8 1PW, the fastest broadband please", '{"verified": true}', plans, "yes the 900 one"]
    grounded = grounded_values(starter_actions, sources)
    assert dict(((a, n), v) for a, n, v in grounded)["change_plan", "plan_code"] == ("B-500", "B-900")
    constraint = ToolCallConstraint(tokenizer, starter_actions, len(tokenizer))
    for code, allowed in (("B-900", True), ("BB-FULL-900", False), ("B-9000", False)):
        matcher = constraint.template_for(grounded)
        text = call("change_plan", account_id="40288163", plan_code=code)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (matcher.consume_tokens(ids) and matcher.is_accepting()) is allowed, code


def test_a_call_can_only_copy_a_grounded_value(tokenizer, starter_actions):
    from bot.data.grounding import grounded_values

    grounded = grounded_values(starter_actions, ["my account is 51234567, postcode bn2 9pr ta"])
    constraint = ToolCallConstraint(tokenizer, starter_actions, len(tokenizer))

    def accepted(text: str) -> bool:
        matcher = constraint.template_for(grounded)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return matcher.consume_tokens(ids) and matcher.is_accepting()

    assert accepted(call("verify_customer", account_id="51234567", postcode="BN2 9PR"))
    for garbled in ({"account_id": "11234567"}, {"postcode": "BBN2 9PR"}, {"postcode": "BN2 9PR ta"}):
        arguments = {"account_id": "51234567", "postcode": "BN2 9PR"} | garbled
        assert not accepted(call("verify_customer", **arguments)), garbled
    # an argument the conversation offers nothing to keeps its pattern: an order number's shape
    assert accepted(call("check_order", order_id="KM-104233"))
    assert not accepted(call("check_order", order_id="E88888"))
    assert constraint.compiles == 1  # compiled once for these values, then kept
    constraint.template_for(grounded)
    assert constraint.compiles == 1


async def test_a_tiny_model_copies_grounded_values_into_its_calls(tmp_path, cache_dir, tiny_base):
    """Random weights, forced to call: every grounded value it writes is one the customer gave."""
    from bot.data.grounding import grounded_values

    weights, engine = tiny_starter_engine(tmp_path, cache_dir, tiny_base)
    actions = weights.profile.actions
    system = {"role": "system", "content": weights.profile.system_prompt}
    messages = ["51234567 and bn2 9pr, whats my bill", "KM-104233 hasnt come, its 40912267 and M14 5RT"]
    written = []
    try:
        for seed in range(3):
            for message in messages:
                grounded = grounded_values(actions, [message])
                ids = prompt_ids(weights.tokenizer, [system, {"role": "user", "content": message}])
                sampling = Sampling(temperature=1.0, seed=seed)
                async for item in engine.stream(ids, 400, Decoding(True, sampling=sampling, grounded=grounded)):
                    if isinstance(item, Finished):
                        written.append((message, parse_reply(item.text)))
    finally:
        await engine.close()
    copied = 0
    for message, step in written:
        assert step.broken_call is None, step
        for name, value in (step.arguments or {}).items():
            spec = actions[step.action].arguments[name] if step.action in actions else None
            if spec is not None and spec.grounded:
                assert value.lower() in message.lower(), (message, step)
                copied += 1
    assert copied  # some calls carried grounded values


def test_patterns_are_checked_where_they_are_declared_and_used(tmp_path, cache_dir):
    from bot.data.project import validate
    from bot.errors import InvalidFiles

    project = starter_project(tmp_path, cache_dir)
    data = validate(settings_of(project))
    from bot.data.profile import profile_of

    profile = profile_of(data)
    assert profile.argument_problems("check_order", {"order_id": "KM-104233"}) == []
    assert profile.argument_problems("check_order", {"order_id": "E88888"}) == [
        "argument 'order_id' must match [A-Z]{2,3}-\\d{4,8}"
    ]
    (project / "training_data" / "dialogues" / "shape.yml").write_text(
        "dialogues:\n"
        "  - id: order-of-another-shape\n"
        "    turns:\n"
        "      - user: where is parcel 104233?\n"
        "      - action: check_order\n"
        "        args: {order_id: '104233'}\n"
        "        result: {status: dispatched}\n"
        "      - bot: It's on its way.\n"
    )
    actions = project / "training_data" / "actions.yml"
    actions.write_text(actions.read_text().replace("pattern: '\\d{8}'", "pattern: '(\\d{8}'", 1))
    with pytest.raises(InvalidFiles) as error:
        validate(settings_of(project))
    text = str(error.value)
    assert "dialogues/shape.yml:6:" in text and "does not match its pattern" in text
    assert "actions.yml:" in text and "pattern" in text and "not a valid regular expression" in text


async def test_a_call_shows_its_status_at_once_and_never_stores_it(tmp_path, cache_dir, serve):
    """The customer sees the action's `status` as soon as the call's name is written, before the
    action runs; a text reply and a handoff send none; nothing of it is stored."""
    replies = [call("check_order", order_id="KM-104233"), "Hello!", call("handoff_to_human", reason="asked")]
    client, _ = await serve(starter_project(tmp_path, cache_dir), replies)
    events = await chat(client, "s1", "where's my order KM-104233?")
    names = [n for n, _ in events]
    assert ("status", {"text": "Checking your order…", "action": "check_order"}) in events
    assert names.index("status") < names.index("message")  # before the apology for the failed action
    assert "Checking your order" not in json.dumps(await stored_events(client, "s1"))
    assert "status" not in [n for n, _ in await chat(client, "s1", "hi")]
    assert "status" not in [n for n, _ in await chat(client, "s2", "I need someone to look at my bill")]
    metrics = await (await client.get("/metrics")).text()
    # something to see: the status, then "Hello!"; a first token: "Hello!" alone
    assert "bot_time_to_first_visible_seconds_count 2.0" in metrics
    assert "bot_time_to_first_token_seconds_count 1.0" in metrics


async def test_a_call_with_nothing_to_copy_makes_the_model_try_again(tmp_path, cache_dir, serve):
    """A call of an action the conversation offers no value for ("KM-120448 update pls" read as
    an outage check with a made-up postcode) makes the policy ask again with that action ruled
    out: a call that acts on what the customer wrote runs; else the model is asked for words
    alone ("ta" needs no call). A call with some values there (an account number, no postcode)
    still asks for what is missing, with nothing generated again."""
    replies = [
        call("check_outage", postcode="KM1 2WU"),  # nothing in the conversation to copy
        call("check_order", order_id="KM-120448"),  # asked again without check_outage: acts on the message
        call("change_plan", account_id="14511120", plan_code="M-145RT"),  # "ta": nothing to copy
        call("check_order", order_id="KM-104233"),  # asked again: a call on nothing the customer wrote
        "You're welcome!",  # asked for words alone
        call("verify_customer", account_id="40912267", postcode="M14 5RT"),  # postcode missing: asked for
    ]
    client, model = await serve(starter_project(tmp_path, cache_dir), replies)
    await chat(client, "r1", "KM-120448 update pls")
    log = await stored_events(client, "r1")
    assert [e["type"] for e in log] == ["user", "action_failed", "bot"]  # sent (nothing listens on port 9)
    assert (log[1]["name"], log[1]["arguments"]) == ("check_order", {"order_id": "KM-120448"})
    assert model.engine.excluded[1] == (HANDOFF_TOOL, "check_outage")

    events = await chat(client, "r1", "ta")
    assert [d["text"] for n, d in events if n == "message"] == ["You're welcome!"]
    assert [e["type"] for e in (await stored_events(client, "r1"))[3:]] == ["user", "bot"]  # nothing refused stored
    assert model.engine.excluded[3] == (HANDOFF_TOOL, "change_plan") and model.engine.text_only[4]

    events = await chat(client, "r2", "what's my balance, account 40912267")
    assert [d["text"] for n, d in events if n == "message"] == [
        "To do that I need your postcode. Could you tell me, please?"
    ]
    assert len(model.engine.prompts) == 6


async def test_metrics_show_the_time_the_model_in_service_spends_on_call_grammars(tmp_path, cache_dir, tiny_base):
    """`bot_grammar_compile_seconds` and `bot_grammar_mask_seconds` read the tool-call constraint
    of the model in service (each brand's own, with several brands): after a call with the
    conversation's values, the time its grammar took."""
    from bot.data.grounding import grounded_values
    from bot.engine.response_model import ResponseModel
    from bot.runtime.model_holder import ModelHolder
    from bot.runtime.prometheus import Metrics

    weights, engine = tiny_starter_engine(tmp_path, cache_dir, tiny_base)
    message = "51234567 and bn2 9pr, whats my bill"
    system = {"role": "system", "content": weights.profile.system_prompt}
    ids = prompt_ids(weights.tokenizer, [system, {"role": "user", "content": message}])
    decoding = Decoding(True, grounded=grounded_values(weights.profile.actions, [message]))
    metrics = Metrics()
    metrics.watch(ModelHolder(ResponseModel(engine, weights.tokenizer, weights.profile, None, 1024)))
    try:
        async for _ in engine.stream(ids, 200, decoding):
            pass
    finally:
        await engine.close()
    shown = {
        line.split()[0]: float(line.split()[-1])
        for line in metrics.exposition()[0].decode().splitlines()
        if line.startswith("bot_grammar_")
    }
    assert shown["bot_grammar_compile_seconds"] == engine.constraint.compile_seconds > 0
    assert shown["bot_grammar_mask_seconds"] == engine.constraint.mask_seconds > 0
