"""The conversation loop without HTTP: context rendering as in training, history fitting,
streaming with real models (tiny and bundled)."""

from __future__ import annotations

import json

import pytest
from serve_support import make_project, settings_of

from bot.conversations.events import (
    action_executed,
    bot_message,
    handed_off,
    new_event,
    resumed,
    slot_set,
    slots_reset,
    user_message,
)
from bot.conversations.state import fold
from bot.data.compiler import tool_call_message
from bot.engine.protocol import Finished
from bot.engine.response_model import load_response_model
from bot.errors import RenderError
from bot.policy.context import to_messages
from bot.rendering import fitted_prompt_ids, prompt_ids

SYSTEM = "You are Ember, the support assistant of Ember Supplies."


def test_stored_events_render_exactly_like_training_data(tokenizer):
    events = [
        user_message("Where is order ES-1001?"),
        action_executed("check_order", {"order_id": "ES-1001"}, {"status": "shipped"}),
        bot_message("It has shipped."),
        user_message("I want a person."),
        handed_off("model", "customer asked", text="Passing you over."),
    ]
    trained = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Where is order ES-1001?"},
        tool_call_message("call_1", "check_order", {"order_id": "ES-1001"}),
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"status": "shipped"})},
        {"role": "assistant", "content": "It has shipped.", "weight": 1},
        {"role": "user", "content": "I want a person."},
        tool_call_message("call_4", "handoff_to_human", {"reason": "customer asked"}),
    ]
    assert prompt_ids(tokenizer, to_messages(events, SYSTEM)) == prompt_ids(tokenizer, trained)


def test_state_folds_slots_and_handoff():
    events = [
        slot_set("order_id", "ES-1"),
        new_event("handoff", reason="asked"),
        slot_set("order_id", "ES-2"),
    ]
    state = fold(events)
    assert state.slots == {"order_id": "ES-2"} and state.handed_off and state.handoff_reason == "asked"
    assert not fold(events + [resumed()]).handed_off
    assert fold(events + [slots_reset(by="action_forget")]).slots == {}


def test_history_that_does_not_fit_drops_the_oldest_exchanges_whole(tokenizer):
    messages = [{"role": "system", "content": SYSTEM}]
    for i in range(30):
        messages += [
            {"role": "user", "content": f"question number {i} " + "about my bill " * 5},
            {"role": "assistant", "content": f"answer {i} " * 8},
        ]
    messages.append({"role": "user", "content": "the latest question"})
    full = prompt_ids(tokenizer, messages)
    ids = fitted_prompt_ids(tokenizer, messages, 400)
    text = tokenizer.decode(ids)
    assert len(full) > 400 >= len(ids) > 300
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}") and "the latest question" in text
    assert "question number 0 " not in text and "question number 29 " in text
    kept = [i for i in range(30) if f"question number {i} " in text]
    assert kept == list(range(kept[0], 30))  # a contiguous recent window
    assert all(f"answer {i} " in text for i in kept)  # no exchange cut in half
    with pytest.raises(RenderError, match="latest message doesn't fit"):
        fitted_prompt_ids(tokenizer, messages, 20)


async def _reply(model, messages, max_new_tokens):
    pieces, result = [], None
    async for item in model.stream(messages, max_new_tokens):
        if isinstance(item, Finished):
            result = item
        else:
            pieces.append(item)
    return pieces, result


async def test_tiny_model_streams_and_stops_at_the_token_limit(tmp_path, cache_dir, tiny_base):
    settings = settings_of(make_project(tmp_path / "p", cache_dir, base=tiny_base))
    model = load_response_model(settings)  # no trained model: the base model with the persona prompt
    assert model.model_id is None
    assert model.profile.system_prompt.startswith("You are Sam, the customer support assistant of Example Shop")
    try:
        pieces, result = await _reply(
            model, [{"role": "system", "content": model.profile.system_prompt}, {"role": "user", "content": "hi"}], 12
        )
    finally:
        await model.close()
    assert result.tokens <= 12 and result.first_token_s is not None
    assert "".join(pieces).strip() == result.text


async def test_bundled_model_answers_in_a_stream(tmp_path, cache_dir):
    """The real SmolLM2-135M-Instruct: a short, non-empty reply that ends at its end-of-turn token."""
    settings = settings_of(make_project(tmp_path / "p", cache_dir))
    model = load_response_model(settings)
    messages = [
        {"role": "system", "content": model.profile.system_prompt},
        {"role": "user", "content": "Hello! Who are you?"},
    ]
    try:
        pieces, result = await _reply(model, messages, 48)
    finally:
        await model.close()
    assert result.finish_reason == "stop" and model.engine.name == "batching"
    assert len(pieces) > 3 and result.text and 0 < result.tokens <= 48
    assert "".join(pieces).strip() == result.text
    assert "<|im_end|>" not in result.text
