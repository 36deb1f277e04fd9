"""`POST /v1/completions` (bot/serve/routes/completions.py): vLLM's wire format on the scripted
engine (text and token-id prompts, streaming, usage, stop strings, length, errors, the key,
cancellation), the official OpenAI client, and the real batching engine on the tiny model."""

from __future__ import annotations

import asyncio

import pytest
from serve_support import ADMIN_TOKEN, make_project, scripted_model, settings_of, sse_events

from bot.engine.stop_strings import StopStrings

REPLY = "Your order KM-104233 left our warehouse today and should arrive tomorrow."


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


async def complete(client, **body):
    response = await client.post("/v1/completions", json={"model": "scripted", "max_tokens": 100} | body)
    return response.status, await response.json()


def stream_chunks(text: str) -> list:
    events = sse_events(text)
    assert events[-1] == ("message", "[DONE]")
    return [data for _, data in events[:-1]]


async def test_a_text_prompt_is_continued_as_given_with_usage(project, serve, tokenizer):
    client, model = await serve(project, [REPLY])
    status, body = await complete(client, prompt="Where is my order?")
    assert status == 200
    assert model.engine.prompts[-1] == ids_of(tokenizer, "Where is my order?")  # no template, no special tokens
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and isinstance(body["created"], int)
    assert body["model"] == "scripted"
    assert body["choices"] == [{"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}]
    prompt_tokens, completion_tokens = len(ids_of(tokenizer, "Where is my order?")), len(ids_of(tokenizer, REPLY))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def test_token_id_prompts_in_each_accepted_form(project, serve, tokenizer):
    client, model = await serve(project, ["ok"] * 4)
    ids = ids_of(tokenizer, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    for prompt in (ids, [ids], ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]):
        status, body = await complete(client, prompt=prompt)
        assert status == 200 and body["choices"][0]["text"] == "ok"
        assert model.engine.prompts[-1] == ids and body["usage"]["prompt_tokens"] == len(ids)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # special tokens in text are read as such


async def test_max_tokens_ends_with_length(project, serve, tokenizer):
    client, model = await serve(project, [REPLY, REPLY])
    status, body = await complete(client, prompt="x", max_tokens=3)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"] == tokenizer.decode(ids_of(tokenizer, REPLY)[:3])
    assert body["usage"]["completion_tokens"] == 3
    body = await (
        await client.post("/v1/completions", json={"model": "scripted", "prompt": "x"})
    ).json()  # no max_tokens
    assert body["usage"]["completion_tokens"] == 16  # OpenAI's default
    assert body["choices"][0]["finish_reason"] == "length"
    client, _ = await serve(project, [REPLY])
    # null: the room the context leaves (1,024 tokens)
    status, body = await complete(client, prompt=[1] * 1020, max_tokens=None)
    assert status == 200
    assert body["usage"]["completion_tokens"] == 4 and body["choices"][0]["finish_reason"] == "length"
    status, body = await complete(client, prompt=[1] * 1024, max_tokens=None)
    assert status == 400 and "1,024 tokens leave no room" in body["error"]["message"]


async def test_stream_sends_pieces_then_the_finish_then_usage_then_done(project, serve, tokenizer):
    client, _ = await serve(project, [REPLY, REPLY])
    response = await client.post(
        "/v1/completions",
        json={
            "model": "scripted",
            "prompt": "hi",
            "max_tokens": 100,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    chunks = stream_chunks(await response.text())
    pieces, last, usage = chunks[:-2], chunks[-2], chunks[-1]
    assert len(pieces) > 5 and all(c["choices"][0]["finish_reason"] is None for c in pieces)
    assert all(c["object"] == "text_completion" and c["model"] == "scripted" for c in chunks)
    assert all(c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in pieces) == REPLY
    assert last["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]
    reply_tokens = len(ids_of(tokenizer, REPLY))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": reply_tokens, "total_tokens": 1 + reply_tokens}

    response = await client.post(
        "/v1/completions", json={"model": "scripted", "prompt": "hi", "max_tokens": 4, "stream": True}
    )
    chunks = stream_chunks(await response.text())
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # no usage chunk unless asked
    assert all(c["usage"] is None for c in chunks)


def test_stop_strings_split_anywhere_across_pieces():
    text = "abc STOP-ME def STOP"
    cases = (
        (["STOP-ME"], "abc ", "STOP-ME"),
        (["def", "STOP"], "abc ", "STOP"),
        (["STOP-MEX"], text, None),
        (["zzz"], text, None),
    )
    for stops, expected, matched in cases:
        for cut in range(len(text) + 1):
            for pieces in ([text[:cut], text[cut:]], list(text)):
                watch = StopStrings(stops)
                out = ""
                for piece in pieces:
                    out += watch.feed(piece)
                    if watch.matched:
                        break
                else:
                    out += watch.flush()
                assert (out, watch.matched) == (expected, matched), (stops, pieces)


async def test_a_stop_string_across_tokens_ends_the_text_and_the_generation(project, serve, tokenizer):
    client, model = await serve(project, [REPLY, REPLY, REPLY], delay=0.01)
    stop = "warehouse today"
    assert len(ids_of(tokenizer, " " + stop)) > 1  # it spans pieces
    status, body = await complete(client, prompt="x", stop=[stop, "never"])
    assert status == 200
    assert body["choices"][0] == {"index": 0, "text": REPLY.split(stop)[0], "logprobs": None, "finish_reason": "stop"}
    assert model.engine.stopped == 1  # the engine's stream was closed at the stop string
    generated = REPLY.split(stop)[0] + stop
    assert body["usage"]["completion_tokens"] == len(ids_of(tokenizer, generated))

    response = await client.post(
        "/v1/completions",
        json={"model": "scripted", "prompt": "x", "max_tokens": 100, "stream": True, "stop": "tomorrow"},
    )
    chunks = stream_chunks(await response.text())
    assert "".join(c["choices"][0]["text"] for c in chunks) == REPLY.split("tomorrow")[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    status, body = await complete(client, prompt="x", stop="KM-104233X")  # a prefix held back, then released
    assert body["choices"][0]["text"] == REPLY


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model": "gpt-4"}, 404, ["The model `gpt-4` does not exist.", "`scripted`"]),
        ({"prompt": ["one", "two"]}, 400, ["one prompt per request"]),
        ({"prompt": [[1, 2], [3]]}, 400, ["one prompt per request"]),
        ({"temperature": 0.7, "n": 2}, 400, ["temperature=0.7", "n=2", "greedily"]),
        ({"echo": True, "logprobs": 1, "best_of": 3}, 400, ["echo=true", "logprobs=1", "best_of=3"]),
        ({"prompt": [1, 49152]}, 400, ["49152", "outside the vocabulary"]),
        ({"prompt": [-1]}, 400, ["-1", "outside the vocabulary"]),
        ({"prompt": ""}, 400, ["empty"]),
        ({"prompt": []}, 400, ["empty"]),
        (
            {"prompt": [1] * 1000, "max_tokens": 100},
            400,
            ["1,000 tokens", "max_tokens (100)", "1,100", "1,024", "model.max_length"],
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, ["5 strings", "at most 4"]),
        ({"stop": ""}, 400, ["empty string"]),
        ({"max_tokens": 0}, 400, ["max_tokens"]),
        ({"stream": True, "temperature": 1}, 400, ["temperature=1"]),
        ({"prompt": {"text": "x"}}, 400, ["prompt"]),
        ({"top_k": 5}, 400, ["top_k", "Extra inputs"]),
    ],
)
async def test_bad_requests_answer_in_openais_error_shape(project, serve, body, status, words):
    client, model = await serve(project)
    response = await client.post("/v1/completions", json={"model": "scripted", "prompt": "hi"} | body)
    answer = await response.json()
    assert response.status == status, answer
    assert set(answer) == {"error"} and answer["error"]["code"] == status and answer["error"]["param"] is None
    assert answer["error"]["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    for word in words:
        assert word in answer["error"]["message"]
    assert not model.engine.prompts  # refused before anything was generated


async def test_malformed_json_and_a_missing_model_are_400(project, serve):
    client, _ = await serve(project)
    response = await client.post("/v1/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400 and "not valid JSON" in (await response.json())["error"]["message"]
    response = await client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status == 400 and "model: Field required" in (await response.json())["error"]["message"]


async def test_the_base_model_is_named_base(project, serve):
    from bot.serve.keys import HOLDER

    client, _ = await serve(project, ["ok"])
    client.server.app[HOLDER].current.model_id = None  # no trained model: the base model with the persona prompt
    status, body = await complete(client, model="base", prompt="hi")
    assert status == 200 and body["model"] == "base"
    status, body = await complete(client, model="scripted", prompt="hi")
    assert status == 404


async def test_with_the_key_set_only_its_holders_get_in_and_they_are_not_rate_limited(
    tmp_path, cache_dir, serve, monkeypatch
):
    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  rate_per_client: 3\n")
    monkeypatch.setenv("BOT_MODEL_SERVER_KEY", "front-end-key")
    client, _ = await serve(project, lambda prompt: "ok")
    body = {"model": "scripted", "prompt": "hi", "max_tokens": 5}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "front-end-key"}):
        response = await client.post("/v1/completions", json=body, headers=headers)
        answer = await response.json()
        assert response.status == 401 and answer["error"]["type"] == "AuthenticationError"
        assert "BOT_MODEL_SERVER_KEY" in answer["error"]["message"]
    response = await client.post("/v1/completions", json=body)
    assert response.status == 429  # wrong or missing keys count against rate_per_client
    assert response.headers["Retry-After"] == "60" and (await response.json())["error"]["type"] == "RateLimitError"
    for _ in range(10):  # a front-end sends many customers' requests from one address
        response = await client.post("/v1/completions", json=body, headers={"Authorization": "Bearer front-end-key"})
        assert response.status == 200


async def test_without_a_key_the_route_is_open_and_rate_limited_like_any_client(
    tmp_path, cache_dir, serve, monkeypatch
):
    monkeypatch.delenv("BOT_MODEL_SERVER_KEY", raising=False)
    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  rate_per_client: 3\n")
    client, _ = await serve(project, lambda prompt: "ok")
    body = {"model": "scripted", "prompt": "hi"}
    statuses = [(await client.post("/v1/completions", json=body)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_a_client_that_leaves_stops_the_generation(project, serve):
    client, model = await serve(project, ["word " * 200], delay=0.02)
    response = await client.post(
        "/v1/completions", json={"model": "scripted", "prompt": "hi", "max_tokens": 500, "stream": True}
    )
    await response.content.readuntil(b"\n\n")  # a first piece has come
    response.close()
    for _ in range(100):
        if model.engine.stopped:
            break
        await asyncio.sleep(0.02)
    assert model.engine.stopped == 1 and model.engine.generated < 100 and model.engine.in_flight() == 0


async def test_a_reload_mid_request_finishes_on_the_model_it_started_with(project, serve, tokenizer):
    settings = settings_of(project)
    old, new = (
        scripted_model(settings, tokenizer, [REPLY], delay=0.02, model_id="old"),
        scripted_model(settings, tokenizer, ["new"], model_id="new"),
    )
    loads = iter([old, new])
    client, _ = await serve(project, loader=lambda: next(loads))
    response = await client.post(
        "/v1/completions", json={"model": "old", "prompt": "hi", "max_tokens": 100, "stream": True}
    )
    assert response.status == 200  # the headers come with the first piece: generating
    reload = asyncio.ensure_future(
        client.post("/api/model/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    )
    chunks = stream_chunks(await response.text())
    assert "".join(c["choices"][0]["text"] for c in chunks) == REPLY and all(c["model"] == "old" for c in chunks)
    assert (await reload).status == 200 and old.engine.closed  # closed once the request was done with it
    assert (await complete(client, model="old", prompt="hi"))[0] == 404
    status, body = await complete(client, model="new", prompt="hi")
    assert status == 200 and body["choices"][0]["text"] == "new"


async def test_an_engine_that_refuses_gets_its_status_streaming_or_not(project, serve):
    client, model = await serve(project)
    await model.engine.close()  # what a request meets while the server stops
    for stream in (False, True):
        response = await client.post("/v1/completions", json={"model": "scripted", "prompt": "hi", "stream": stream})
        answer = await response.json()
        assert response.status == 503 and response.content_type == "application/json"  # before any event went out
        assert answer["error"]["type"] == "InternalServerError" and "closed" in answer["error"]["message"]


async def test_the_openai_client_streaming_and_not(project, serve, tokenizer):
    from openai import AsyncOpenAI, NotFoundError

    client, model = await serve(project, [REPLY, REPLY])
    api = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    try:
        completion = await api.completions.create(
            model="scripted", prompt=[1, 2, 3], max_tokens=50, temperature=0, stop=["tomorrow"]
        )
        assert completion.choices[0].text == REPLY.split("tomorrow")[0]
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.prompt_tokens == 3 and model.engine.prompts[-1] == [1, 2, 3]

        stream = await api.completions.create(
            model="scripted", prompt="hi", max_tokens=50, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].usage.completion_tokens == len(ids_of(tokenizer, REPLY))

        with pytest.raises(NotFoundError) as caught:
            await api.completions.create(model="nope", prompt="hi")
        assert caught.value.status_code == 404 and "The model `nope` does not exist." in caught.value.message
    finally:
        await api.close()


async def test_the_route_continues_as_the_in_process_engine_does_on_the_tiny_model(
    tmp_path, cache_dir, tiny_base, tokenizer
):
    """The real loader and batching engine: the route's greedy text for rendered prompt ids is
    the engine's own for the same ids."""
    from aiohttp.test_utils import TestClient, TestServer

    from bot.engine.response_model import load_response_model
    from bot.rendering import prompt_ids
    from bot.serve.app import create_app

    settings = settings_of(make_project(tmp_path / "p", cache_dir, base=tiny_base))
    model = load_response_model(settings)
    assert model.engine.name == "batching"
    client = TestClient(TestServer(create_app(settings, load_model=lambda: model)))
    await client.start_server()
    try:
        ids = prompt_ids(
            tokenizer,
            [{"role": "system", "content": "You are Ember."}, {"role": "user", "content": "where is my parcel?"}],
        )
        response = await client.post("/v1/completions", json={"model": "base", "prompt": ids, "max_tokens": 24})
        body = await response.json()
        streamed = await client.post(
            "/v1/completions", json={"model": "base", "prompt": ids, "max_tokens": 24, "stream": True}
        )
        chunks = stream_chunks(await streamed.text())
        in_process = [item async for item in model.engine.stream(ids, 24)]
    finally:
        await client.close()
    finished = in_process[-1]
    assert response.status == 200 and body["model"] == "base"
    assert body["choices"][0]["text"] == "".join(in_process[:-1]) and body["choices"][0]["text"].strip()
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == finished.tokens and body["usage"]["prompt_tokens"] == len(ids)
    assert body["choices"][0]["finish_reason"] == ("length" if finished.finish_reason == "length" else "stop")
