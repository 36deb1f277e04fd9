"""The generation engines with the tiny random model in fp32: batched greedy decoding gives every
request exactly the tokens it gets alone (checked against transformers' own `generate`), whatever
else runs beside it, whatever the prompt cache holds; a sampled request's tokens depend on its own
seed, prompt and temperature alone; bad input and faults stay with the request that caused them."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from bot.engine.batch_engine import BatchingEngine
from bot.engine.constraint import ToolCallConstraint
from bot.engine.protocol import Decoding, EngineBusy, EngineClosed, EngineError, Finished, PromptTooLong, Sampling
from bot.engine.serial import SerialEngine


@pytest.fixture(scope="module")
def tiny(tiny_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()


def alone(model, tokenizer, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy `generate` for one prompt: the reference."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, len(prompt) :].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


async def run(
    engine, prompt, n, *, after: float = 0.0, stop_after: int | None = None, tool_call=False, **sampling
) -> tuple[list[str], Finished | None]:
    """`sampling`: temperature and seed (greedy without them)."""
    await asyncio.sleep(after)
    pieces, finished = [], None
    stream = engine.stream(prompt, n, Decoding(tool_call, sampling=Sampling(**sampling)))
    async for item in stream:
        if isinstance(item, Finished):
            finished = item
        else:
            pieces.append(item)
            if stop_after and len(pieces) >= stop_after:
                await stream.aclose()
                break
    return pieces, finished


def prompts_of(tokenizer, sizes) -> list[list[int]]:
    return [tokenizer(f"conversation {k}: " + "where is my order? " * k)["input_ids"] for k in sizes]


async def test_batched_requests_get_the_tokens_they_get_alone(tiny, tokenizer):
    prompts = prompts_of(tokenizer, (1, 9, 30, 3, 60, 2, 14))  # 7 requests, 3 rows: some wait in the queue
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=3, prefill_tokens=128)
    try:
        results = await asyncio.gather(*(run(engine, p, 24, after=0.003 * i) for i, p in enumerate(prompts)))
    finally:
        await engine.close()
    for prompt, (pieces, finished) in zip(prompts, results, strict=True):
        assert list(finished.token_ids) == alone(tiny, tokenizer, prompt, 24)
        assert (
            "".join(pieces).strip()
            == finished.text
            == tokenizer.decode(finished.token_ids, skip_special_tokens=True).strip()
        )
    assert engine.stats().generated_tokens == sum(f.tokens for _, f in results)
    assert not engine.thread.is_alive()


async def test_cancelling_one_request_leaves_the_others_unchanged(tiny, tokenizer):
    prompts = prompts_of(tokenizer, (4, 11, 25))
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=4)
    try:
        first, cancelled, third = await asyncio.gather(
            run(engine, prompts[0], 40), run(engine, prompts[1], 40, stop_after=3), run(engine, prompts[2], 40)
        )
        await asyncio.sleep(0.05)
        assert engine.stats().running == 0 and engine.in_flight() == 0  # the cancelled row left the batch
    finally:
        await engine.close()
    assert cancelled[1] is None and len(cancelled[0]) == 3
    assert list(first[1].token_ids) == alone(tiny, tokenizer, prompts[0], 40)
    assert list(third[1].token_ids) == alone(tiny, tokenizer, prompts[2], 40)


async def test_prompt_cache_gives_the_tokens_of_a_full_prefill(tiny, tokenizer):
    system = tokenizer("You are Sam. Be brief and kind. " * 4)["input_ids"]
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, pinned_prefix=system, kv_cache_mb=1)
    try:
        turn1 = system + tokenizer(" Customer: hello, my order is late.")["input_ids"]
        _, one = await run(engine, turn1, 20)
        assert one.cached_tokens == len(system)  # the pinned system prompt
        turn2 = turn1 + list(one.token_ids) + tokenizer(" Customer: and my refund?")["input_ids"]
        _, two = await run(engine, turn2, 20)
        assert two.cached_tokens >= len(turn1) + len(one.token_ids) - 1  # the whole first turn was reused
        assert list(two.token_ids) == alone(tiny, tokenizer, turn2, 20)
        # A history trim: the oldest exchange dropped, so the cache matches only up to where they differ.
        trimmed = system + tokenizer(" Customer: and my refund?")["input_ids"]
        _, three = await run(engine, trimmed, 20)
        assert len(system) <= three.cached_tokens < len(turn1)
        assert list(three.token_ids) == alone(tiny, tokenizer, trimmed, 20)
        # An eviction: room for little more than the system prompt, so the conversation is gone.
        engine.prompts.limit_bytes = engine.prompts.nbytes + 64 * 1024
        for k in range(12):
            await run(engine, system + tokenizer(f" Customer: other question {k} " * 40)["input_ids"], 4)
        _, four = await run(engine, turn2, 20)
        assert four.cached_tokens < len(turn1) and list(four.token_ids) == list(two.token_ids)
    finally:
        await engine.close()


async def test_memory_stays_within_kv_cache_mb(tiny, tokenizer):
    limit_mb = 0.25
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=8, kv_cache_mb=limit_mb)
    seen = []

    async def conversation(k: int) -> None:
        prompt = tokenizer(f"customer {k} says: " + "my parcel never came " * (5 + k % 7))["input_ids"]
        for _ in range(2):
            _, finished = await run(engine, prompt, 16, after=0.002 * k)
            seen.append(engine.prompts.nbytes)
            prompt = prompt + list(finished.token_ids) + tokenizer(" thanks, and?")["input_ids"]

    try:
        await asyncio.gather(*(conversation(k) for k in range(50)))
    finally:
        await engine.close()
    assert max(seen) <= limit_mb * 2**20
    assert len(seen) == 100 and engine.hits > 0 and engine.misses > 0


async def test_bad_input_gets_a_clear_error_and_the_loop_goes_on(tiny, tokenizer):
    engine = BatchingEngine(tiny, tokenizer, max_length=256, max_batch=4)
    try:
        with pytest.raises(PromptTooLong, match="exceeds the model's context of 256 tokens"):
            await run(engine, [5] * 250, 16)
        with pytest.raises(PromptTooLong, match="outside the vocabulary"):
            await run(engine, [5, len(tokenizer) + 7], 16)
        prompt = prompts_of(tokenizer, (3,))[0]
        with pytest.raises(EngineError, match="temperature must be 0 .greedy decoding. or more, not -0.5"):
            await run(engine, prompt, 16, temperature=-0.5)
        with pytest.raises(EngineError, match="temperature must be a finite number"):
            await run(engine, prompt, 16, temperature=float("nan"))
        _, finished = await run(engine, prompt, 12)
        assert list(finished.token_ids) == alone(tiny, tokenizer, prompt, 12)
    finally:
        await engine.close()


async def test_a_fault_in_one_request_fails_that_request_alone(tiny, tokenizer, monkeypatch):
    poison = tokenizer("zebra")["input_ids"][0]
    decoder = tiny.get_decoder()
    forward = decoder.forward

    def faulty(*args, **kwargs):  # a fault that only this request's prompt triggers
        if (kwargs["input_ids"] == poison).any():
            raise RuntimeError("kernel fault")
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", faulty)
    prompts = prompts_of(tokenizer, (2, 5))
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=4)
    try:
        good1, bad, good2 = await asyncio.gather(
            run(engine, prompts[0], 16),
            run(engine, prompts[1][:3] + [poison] + prompts[1][3:], 16),
            run(engine, prompts[1], 16),
            return_exceptions=True,
        )
        later = await run(engine, prompts[0], 16)  # the loop is still running
    finally:
        await engine.close()
    assert isinstance(bad, EngineError) and "kernel fault" not in str(bad)
    monkeypatch.undo()
    assert list(good1[1].token_ids) == list(later[1].token_ids) == alone(tiny, tokenizer, prompts[0], 16)
    assert list(good2[1].token_ids) == alone(tiny, tokenizer, prompts[1], 16)


async def test_a_full_queue_answers_busy_and_nobody_is_refused_before(tiny, tokenizer):
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=1, max_queue=2)
    prompt = prompts_of(tokenizer, (5,))[0]
    try:
        with engine.wake:  # the engine thread can't take anything from the queue meanwhile
            tasks = [asyncio.ensure_future(run(engine, prompt, 30)) for _ in range(2)]
            await asyncio.sleep(0.01)  # both are queued
            with pytest.raises(EngineBusy, match="2 requests are already waiting"):
                await run(engine, prompt, 30)
        results = await asyncio.gather(*tasks) + [await run(engine, prompt, 30)]  # room again
    finally:
        await engine.close()
    assert all(list(f.token_ids) == list(results[0][1].token_ids) for _, f in results)


async def test_serial_engine_and_ignore_eos(tiny, tokenizer):
    prompt = prompts_of(tokenizer, (6,))[0]
    serial = SerialEngine(tiny, tokenizer, max_length=1024)
    forced = BatchingEngine(tiny, tokenizer, max_length=1024, ignore_eos=True)
    try:
        _, by_serial = await run(serial, prompt, 24)
        _, full = await run(forced, prompt, 50)
    finally:
        await serial.close()
        await forced.close()
    assert list(by_serial.token_ids) == alone(tiny, tokenizer, prompt, 24)
    assert full.tokens == 50 and full.finish_reason == "length"
    assert not serial.thread.is_alive() and not forced.thread.is_alive()


async def test_reload_under_load_fails_nothing_and_ends_the_old_engine(tmp_path, cache_dir, tiny_base):
    """The real loader and the batching engine on the tiny model: 8 conversations mid-reply while
    the model is reloaded."""
    from aiohttp.test_utils import TestClient, TestServer
    from serve_support import ADMIN_TOKEN, make_project, settings_of, sse_events

    from bot.engine.response_model import load_response_model
    from bot.serve.app import create_app

    settings = settings_of(
        make_project(tmp_path / "p", cache_dir, base=tiny_base, config="serve:\n  max_new_tokens: 60\n")
    )
    loaded = []

    def loader():
        loaded.append(load_response_model(settings))
        return loaded[-1]

    client = TestClient(TestServer(create_app(settings, load_model=loader, admin_token=ADMIN_TOKEN)))
    await client.start_server()

    async def chat(i: int):
        response = await client.post(
            "/api/chat/stream", json={"sender": f"c{i}", "message": "hello, where is my parcel?"}
        )
        return response.status, sse_events(await response.text())

    try:
        running = [asyncio.ensure_future(chat(i)) for i in range(8)]
        await asyncio.sleep(0.05)
        reload = await client.post("/api/model/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        old, new = loaded
        assert reload.status == 200 and not old.engine.thread.is_alive()  # closed once its answers were done
        results = await asyncio.gather(*running) + await asyncio.gather(*(chat(i) for i in range(8, 12)))
        metrics = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    for status, events in results:
        names = [name for name, _ in events]
        assert status == 200 and "message" in names and "error" not in names and names[-1] == "done"
    assert old.engine.stats().generated_tokens > 0 and new.engine.stats().generated_tokens > 0
    assert not new.engine.thread.is_alive()
    for gauge in (
        "bot_engine_queue_length",
        "bot_engine_running_rows",
        "bot_engine_kv_cache_bytes",
        "bot_engine_guessed_tokens",
        "bot_prompt_cache_hits_total",
    ):
        assert gauge in metrics
    steps = next(line for line in metrics.splitlines() if line.startswith("bot_engine_decode_steps"))
    assert float(steps.split()[-1]) > 0 and "bot_engine_forced_tokens" in metrics
    hits = next(line for line in metrics.splitlines() if line.startswith("bot_prompt_cache_hits_total"))
    assert float(hits.split()[-1]) >= 4  # at least the conversations after the reload reused the system prompt


@pytest.mark.parametrize("kind", [BatchingEngine, SerialEngine])
async def test_closing_mid_reply_stops_the_thread_at_once_and_the_reply_fails(tiny, tokenizer, kind):
    """What a SIGTERM does to a reply still running when the server closes its engine: the
    thread stops after the current step, and the reply ends in EngineClosed, never looks whole."""
    import time

    engine = kind(tiny, tokenizer, max_length=1024, ignore_eos=True)
    stream = engine.stream(prompts_of(tokenizer, (3,))[0], 1000)
    try:
        assert isinstance(await anext(stream), str)  # generating
        started = time.monotonic()
        await engine.close()
        closing = time.monotonic() - started
        with pytest.raises(EngineClosed):
            async for item in stream:
                assert not isinstance(item, Finished)
    finally:
        await stream.aclose()
    assert closing < 0.5 and not engine.thread.is_alive()
    assert engine.stats().generated_tokens < 1000


# -- sampling --------------------------------------------------------------------------------------
async def test_a_sampled_reply_depends_on_its_own_seed_alone(tiny, tokenizer):
    prompt, *others = prompts_of(tokenizer, (6, 2, 17, 40))
    sample = {"temperature": 0.7, "seed": 1234}
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=6)
    rows_beside = []  # how many rows each decode step of the sampled request had

    def watched_decode(decode=engine._decode):
        if any(r.request.prompt == prompt and r.request.temperature == 0.7 for r in engine.rows):
            rows_beside.append(len(engine.rows))
        decode()

    try:
        _, first = await run(engine, prompt, 30, **sample)
        _, again = await run(engine, prompt, 30, **sample)  # its prompt now comes from the prompt cache
        assert not rows_beside  # (not watched yet: both ran alone)
        engine._decode = watched_decode
        batched = await asyncio.gather(
            run(engine, others[0], 60, temperature=0.7, seed=1),
            run(engine, others[1], 60),  # greedy beside sampled rows
            run(engine, prompt, 30, after=0.005, **sample),  # joins a running batch
            run(engine, others[2], 60, after=0.01, temperature=1.5, seed=1234),  # same seed, other prompt
            run(engine, prompt, 30, after=0.01, **sample),  # the same request twice at once
            run(engine, others[1], 20, temperature=0.0, seed=99),  # temperature 0: greedy, the seed unused
            run(engine, others[0], 20, temperature=1e-3, seed=5),  # near 0: the draw is all but greedy
        )
    finally:
        await engine.close()
    assert max(rows_beside) > 1  # the sampled request did share the batch
    assert list(first.token_ids) != alone(tiny, tokenizer, prompt, 30)  # it was sampled, not greedy
    assert first.token_ids == again.token_ids == batched[2][1].token_ids == batched[4][1].token_ids
    assert list(batched[1][1].token_ids) == alone(tiny, tokenizer, others[1], 60)
    assert list(batched[5][1].token_ids) == alone(tiny, tokenizer, others[1], 20)
    assert list(batched[6][1].token_ids) == alone(tiny, tokenizer, others[0], 20)


async def test_different_seeds_give_different_replies(tiny, tokenizer):
    prompt = prompts_of(tokenizer, (5,))[0]
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, max_batch=8, ignore_eos=True)
    try:
        seeded = await asyncio.gather(*(run(engine, prompt, 20, temperature=1.5, seed=s) for s in range(4)))
        unseeded = await asyncio.gather(*(run(engine, prompt, 20, temperature=1.5) for _ in range(2)))
    finally:
        await engine.close()
    assert len({f.token_ids for _, f in seeded}) == 4
    assert unseeded[0][1].token_ids != unseeded[1][1].token_ids  # no seed: a random one each


async def test_the_serial_engine_samples_as_the_batching_engine_does(tiny, tokenizer):
    prompt = prompts_of(tokenizer, (8,))[0]
    serial = SerialEngine(tiny, tokenizer, max_length=1024)
    batching = BatchingEngine(tiny, tokenizer, max_length=1024)
    try:
        _, by_serial = await run(serial, prompt, 24, temperature=0.7, seed=42)
        _, again = await run(serial, prompt, 24, temperature=0.7, seed=42)
        _, other_seed = await run(serial, prompt, 24, temperature=0.7, seed=43)
        _, by_batching = await run(batching, prompt, 24, temperature=0.7, seed=42)
    finally:
        await serial.close()
        await batching.close()
    assert by_serial.token_ids == again.token_ids == by_batching.token_ids
    assert by_serial.token_ids != other_seed.token_ids
    assert list(by_serial.token_ids) != alone(tiny, tokenizer, prompt, 24)


@pytest.fixture(scope="module")
def starter_constraint(tmp_path_factory, cache_dir, tokenizer, tiny):
    """The tool-call constraint of the template project's actions, for the tiny model."""
    from serve_support import make_project, settings_of

    from bot.data.project import validate

    actions = validate(settings_of(make_project(tmp_path_factory.mktemp("calls") / "p", cache_dir))).actions
    return actions, ToolCallConstraint(tokenizer, actions, tiny.get_output_embeddings().weight.shape[0])


@pytest.mark.parametrize("kind", [BatchingEngine, SerialEngine])
async def test_a_sampled_forced_call_is_still_a_valid_call(tiny, tokenizer, starter_constraint, kind):
    """At a high temperature random weights write anything at all: the constraint masks before the
    draw, so every call still parses as a declared action."""
    from bot.rendering import parse_reply

    actions, constraint = starter_constraint
    engine = kind(tiny, tokenizer, max_length=1024, max_batch=4, constraint=constraint)
    prompt = prompts_of(tokenizer, (3,))[0]
    try:
        results = await asyncio.gather(
            *(run(engine, prompt, 400, tool_call=True, temperature=1.5, seed=s) for s in range(3))
        )
    finally:
        await engine.close()
    for _, result in results:
        step = parse_reply(result.text)
        assert result.finish_reason == "stop", result.text
        assert step.action in set(actions) | {"handoff_to_human"} and step.broken_call is None, result.text


# -- speculation (prompt lookup) --------------------------------------------------------------
async def speculating_and_not(tiny, tokenizer, prompts, n, **engine_options):
    """Each prompt's result and the engine's stats, with speculation off then on."""
    out = {}
    for speculation in (False, True):
        engine = BatchingEngine(tiny, tokenizer, max_length=1024, speculation=speculation, **engine_options)
        try:
            results = await asyncio.gather(
                *(
                    run(
                        engine,
                        p,
                        n,
                        after=0.003 * i,
                        tool_call=engine_options.get("constraint") is not None and i % 2 == 0,
                    )
                    for i, p in enumerate(prompts)
                )
            )
        finally:
            await engine.close()
        out[speculation] = (results, engine.stats())
    return out


async def test_speculation_writes_exactly_the_tokens_of_one_at_a_time(tiny, tokenizer, monkeypatch):
    """Guesses are kept only where greedy decoding agrees, whatever the other rows guessed and
    kept (their rejected columns hidden, then compacted away): every request gets the tokens it
    gets without speculation, and transformers' own, in fewer forward passes."""
    import bot.engine.batch_engine as batch_engine
    from bot.engine.kv import BatchCache

    compactions = []
    compact = BatchCache.compact
    monkeypatch.setattr(batch_engine, "COMPACT_AFTER", 0)  # rebuild at the first hidden column
    monkeypatch.setattr(BatchCache, "compact", lambda self, starts: compactions.append(1) or compact(self, starts))
    prompts = prompts_of(tokenizer, (1, 9, 30, 3, 60, 2, 14))
    by = await speculating_and_not(tiny, tokenizer, prompts, 64, max_batch=3, prefill_tokens=128)
    (off, off_stats), (on, on_stats) = by[False], by[True]
    for (_, without), (pieces, with_) in zip(off, on, strict=True):
        assert with_.token_ids == without.token_ids
        assert "".join(pieces).strip() == with_.text == without.text
    assert list(on[4][1].token_ids) == alone(tiny, tokenizer, prompts[4], 64)
    assert off_stats.drafted_tokens == 0 and on_stats.accepted_tokens > 0
    assert on_stats.accepted_tokens < on_stats.drafted_tokens  # some guesses were wrong, and hidden
    assert on_stats.decode_steps < off_stats.decode_steps
    assert on_stats.generated_tokens == off_stats.generated_tokens
    assert compactions


async def test_speculation_keeps_the_prompt_cache_exact(tiny, tokenizer):
    """A conversation's next turn reuses the KV a speculating turn left (hidden columns skipped)
    and gets the tokens of a full prefill."""
    system = tokenizer("You are Sam. Be brief and kind. " * 4)["input_ids"]
    engine = BatchingEngine(tiny, tokenizer, max_length=1024, pinned_prefix=system, max_batch=4)
    try:
        turns = [
            system + tokenizer(f" Customer {k}: my order KM-10{k}233 is late." * (k + 1))["input_ids"]
            for k in range(3)
        ]
        firsts = await asyncio.gather(*(run(engine, t, 40) for t in turns))
        seconds = [
            t + list(f.token_ids) + tokenizer(" Customer: and KM-104233?")["input_ids"]
            for t, (_, f) in zip(turns, firsts, strict=True)
        ]
        again = await asyncio.gather(*(run(engine, t, 40) for t in seconds))
    finally:
        await engine.close()
    assert engine.stats().accepted_tokens > 0
    for turn, (_, result) in zip(seconds, again, strict=True):
        assert result.cached_tokens > len(turn) // 2
        assert list(result.token_ids) == alone(tiny, tokenizer, turn, 40)


async def test_speculation_keeps_calls_under_the_constraint(tiny, tokenizer, starter_constraint):
    """Inside a tool call each guessed position is masked by the grammar as it stands after the
    kept tokens before it, and what the grammar forces is guessed whole: the calls are those
    written one token at a time."""
    _, constraint = starter_constraint
    prompts = prompts_of(tokenizer, (3, 7, 12, 20))
    by = await speculating_and_not(tiny, tokenizer, prompts, 200, max_batch=4, constraint=constraint)
    (off, _), (on, on_stats) = by[False], by[True]
    assert [r.token_ids for _, r in on] == [r.token_ids for _, r in off]
    assert on_stats.accepted_tokens > 0 and on_stats.forced_tokens > 0  # JSON the grammar forces, fed at once


async def test_the_remote_engine_sends_the_temperature_and_seed(tokenizer):
    """A real local model server (aiohttp) that records each /v1/completions body."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from bot.engine.remote import RemoteEngine

    bodies = []

    async def completions(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text, finish in (("Hello", None), (" there.", "stop")):
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    server = TestServer(app)
    await server.start_server()
    engine = RemoteEngine(str(server.make_url("/")), "m", timeout_s=5)
    try:
        _, greedy = await run(engine, [1, 2, 3], 8)
        _, sampled = await run(engine, [1, 2, 3], 8, temperature=0.7, seed=11)
        with pytest.raises(EngineError, match="temperature must be 0 .greedy decoding. or more"):
            await run(engine, [1, 2, 3], 8, temperature=-1)
    finally:
        await engine.close()
        await server.close()
    assert greedy.text == sampled.text == "Hello there."
    assert len(bodies) == 2  # the negative temperature never reached the server
    assert bodies[0]["temperature"] == 0 and "seed" not in bodies[0]
    assert bodies[1]["temperature"] == 0.7 and bodies[1]["seed"] == 11
