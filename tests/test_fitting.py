"""Fitting a conversation into the context (bot.rendering.fitted_prompt_ids): linear in the
conversation's length, and the same ids as the old quadratic search, kept here as the reference."""

from __future__ import annotations

import json
import random
import time

import pytest

from bot.errors import RenderCancelled, RenderError
from bot.rendering import _exchanges, fitted_prompt_ids, prompt_ids


def reference_fitted_prompt_ids(tokenizer, messages, budget):
    """The implementation this replaced: render the whole suffix again for every start."""
    head, exchanges = _exchanges(messages)
    for start in range(len(exchanges)):
        ids = prompt_ids(tokenizer, head + [m for part in exchanges[start:] for m in part])
        if len(ids) <= budget:
            return ids
    raise RenderError("the latest message doesn't fit")


WORDS = [
    "hello",
    "my",
    "bill",
    "is",
    "£12",
    "wrong",
    "KM-104233",
    "café",
    "naïve",
    "日本語",
    "🙂",
    "  ",
    "\n",
    "\n\n",
    "<|im_end|>",
    "<|im_start|>assistant",
    "<tool_call>",
    "{",
    "}",
    "'",
    '"',
    "\t",
    "ok",
    "Thanks!",
    "  leading",
    "trailing  ",
]


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return ""
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(1, 30)))


def random_conversation(rng: random.Random) -> list[dict]:
    messages = []
    if rng.random() < 0.85:
        messages.append({"role": "system", "content": random_text(rng) * rng.randint(1, 3)})
    if rng.random() < 0.1:
        messages.append({"role": "assistant", "content": random_text(rng)})  # a greeting before the customer speaks
    for k in range(rng.randint(1, 20)):
        messages.append({"role": "user", "content": random_text(rng)})
        if rng.random() < 0.2:
            call_id = f"call_{k}"
            arguments = json.dumps({"order_id": random_text(rng)[:20]}, ensure_ascii=False)
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "check_order", "arguments": arguments},
                        }
                    ],
                }
            )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": json.dumps({"status": random_text(rng)}, ensure_ascii=False),
                }
            )
        if rng.random() < 0.9:
            messages.append({"role": "assistant", "content": random_text(rng)})
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": random_text(rng)})
    return messages


def outcome(function, *args):
    try:
        return function(*args)
    except RenderError:
        return "doesn't fit"


def compare_with_the_quadratic_search(tokenizer, rng: random.Random, conversations: int) -> tuple[int, int]:
    """Random conversations, each fitted into three budgets by both searches, which must agree;
    (how many comparisons, how many of them dropped some history)."""
    compared = fitted = 0
    for _ in range(conversations):
        messages = random_conversation(rng)
        whole = len(prompt_ids(tokenizer, messages))
        for budget in {whole - 1, max(1, whole // 3), rng.randint(1, whole + 10)}:
            expected = outcome(reference_fitted_prompt_ids, tokenizer, messages, budget)
            assert outcome(fitted_prompt_ids, tokenizer, messages, budget) == expected, (messages, budget)
            compared += 1
            fitted += expected != "doesn't fit" and len(expected) < whole
    return compared, fitted


def test_the_same_ids_as_the_quadratic_search_on_many_conversations(tokenizer):
    compared, fitted = compare_with_the_quadratic_search(tokenizer, random.Random(12), 70)
    assert compared > 180 and fitted > 80  # most comparisons dropped some history, so the window was searched


def test_five_thousand_short_messages_fit_in_well_under_a_second(tokenizer):
    messages = [{"role": "system", "content": "You are Wren, the assistant of Kestrel Mobile. " * 40}]
    for i in range(2500):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "and the latest one"})
    started = time.perf_counter()
    ids = fitted_prompt_ids(tokenizer, messages, 1920)
    seconds = time.perf_counter() - started
    assert seconds < 0.25, f"{seconds:.3f} s"
    text = tokenizer.decode(ids)
    assert 1800 < len(ids) <= 1920
    assert "question 2499" in text and "and the latest one" in text and "question 2000" not in text
    # the same window as the reference (quadratic: compared on the last 200 messages, with a smaller budget)
    tail = messages[:1] + messages[-201:]
    window = fitted_prompt_ids(tokenizer, tail, 900)
    assert len(window) < len(prompt_ids(tokenizer, tail))
    assert window == reference_fitted_prompt_ids(tokenizer, tail, 900)


def test_a_huge_old_message_is_not_tokenized_just_to_be_dropped(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "x" * 5_000_000},
        {"role": "assistant", "content": "ok"},
    ]
    messages += [{"role": "user", "content": "hi"}]
    started = time.perf_counter()
    ids = fitted_prompt_ids(tokenizer, messages, 500)
    assert time.perf_counter() - started < 0.5
    assert ids == prompt_ids(tokenizer, [messages[0], messages[-1]])


def test_rendering_stops_when_its_request_has_gone(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(100):
        messages += [
            {"role": "user", "content": f"question {i} " * 5},
            {"role": "assistant", "content": f"answer {i} " * 5},
        ]
    messages.append({"role": "user", "content": "last"})
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(RenderCancelled):
        fitted_prompt_ids(tokenizer, messages, 1000, cancelled=cancelled)
    assert len(asked) == 4  # asked between exchanges, and stopped at once


PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_a_template_whose_counts_do_not_add_up_still_gets_the_same_window(tokenizer):
    """No special token between messages: text merges across message boundaries, so counting
    exchanges one by one is only an estimate and the window is settled by rendering."""
    saved = tokenizer.chat_template
    tokenizer.chat_template = PLAIN_TEMPLATE
    try:
        compare_with_the_quadratic_search(tokenizer, random.Random(7), 25)
    finally:
        tokenizer.chat_template = saved


async def test_a_prompt_still_rendering_stops_soon_after_its_client_leaves(
    tmp_path, cache_dir, tokenizer, monkeypatch
):
    """With a context of 200,000 tokens the walk back over thousands of exchanges takes a second
    or more even when linear: the rendering thread, which asyncio can't cancel, is told to stop."""
    import asyncio
    import threading

    from serve_support import make_project, scripted_model, settings_of

    import bot.engine.response_model as generator

    ended: dict = {}
    real = generator.fitted_prompt_ids

    def observed(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        except BaseException as e:
            ended["error"] = e
            raise
        finally:
            ended["at"] = time.monotonic()

    monkeypatch.setattr(generator, "fitted_prompt_ids", observed)
    model = scripted_model(settings_of(make_project(tmp_path / "bot", cache_dir)), tokenizer)
    model.max_length = 200_000
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(20_000):
        messages += [
            {"role": "user", "content": f"question {i} about my bill"},
            {"role": "assistant", "content": f"answer {i} about your bill"},
        ]
    messages.append({"role": "user", "content": "the latest"})

    async def consume():
        async for _ in model.stream(messages, 16):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)  # rendering, in its thread
    assert not ended
    task.cancel()
    left = time.monotonic()
    for _ in range(50):
        if ended:
            break
        await asyncio.to_thread(threading.Event().wait, 0.01)
    assert isinstance(ended.get("error"), RenderCancelled) and ended["at"] - left < 0.1
    assert not model.engine.prompts  # the engine never got it
