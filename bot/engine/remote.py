"""The remote engine: generation on a model server (vLLM, or another `bot serve`) over its
OpenAI-compatible `POST /v1/completions`, so this process holds no weights.

The prompt is rendered here, exactly as in training (bot.rendering), and sent as token ids; the
server streams text back (`stream: true`). The request's sampling temperature goes with it (0, the
default, is greedy), and its seed when one is given: the server samples. The end of the reply is
the model's end-of-turn token, which the server stops on by itself, so no `stop` strings are
sent (vLLM drops special tokens from the text, so a stop string could never match one).

Differences from the in-process engines:
- The tool-call constraint (bot.engine.constraint) can't run inside a remote decode loop, so
  none is applied: a malformed call becomes a failed call in the dialogue (parse_reply), as
  with any engine. `Decoding(tool_call=True)` (a reply that must be a call) raises EngineError.
- The server sends text, not token ids: `Finished.token_ids` is empty and
  `Finished.completion_tokens` carries the server's usage count.
- Any failure to get a reply (server down, slower than `timeout_s` to the first text or between
  two chunks, an HTTP error, a stream that breaks off) raises `ModelServerUnavailable`; the
  engine remembers the reason (`fault`) until a request or a `probe` (a one-token completion)
  succeeds again.

Closing a stream closes its HTTP request: the server sees the client leave and stops that
generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import aiohttp

from bot.engine.protocol import (
    LENGTH,
    PLAIN,
    STOP,
    Decoding,
    Engine,
    EngineClosed,
    EngineError,
    EngineStats,
    Finished,
)


class ModelServerUnavailable(EngineError):
    """The model server could not give a reply (down, too slow, an HTTP error, a broken stream)."""


class RemoteEngine(Engine):
    name = "remote"

    def __init__(self, url: str, model: str, *, timeout_s: float = 30.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.fault: str | None = None  # why the last request failed; None once one succeeds
        self.closed = False
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._generated = 0
        self._probing = asyncio.Lock()
        self._probes = 0  # probes done

    @property
    def endpoint(self) -> str:
        return self.url + ("/completions" if self.url.endswith("/v1") else "/v1/completions")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: it belongs to the serving event loop
            timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_read=self.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers())
        return self._session

    def _failed(self, reason: str) -> ModelServerUnavailable:
        self.fault = reason
        return ModelServerUnavailable(f"the model server at {self.url} {reason}")

    async def stream(
        self, prompt_ids: Sequence[int], max_new_tokens: int, decoding: Decoding = PLAIN
    ) -> AsyncIterator[str | Finished]:
        """`decoding.text_only` is not enforced (a call the reply opens anyway is refused by the
        policy) and `decoding.grounded` not sent (the model server's calls are checked after)."""
        sampling = decoding.sampling
        if self.closed:
            raise EngineClosed("the model engine is closed")
        if decoding.tool_call:
            raise EngineError("a remote model server can't force a tool call (the constraint runs only in process)")
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": max_new_tokens,
            "stream": True,
            "temperature": sampling.temperature,
            "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        started, first, parts, reason, usage, ended = time.monotonic(), None, [], None, {}, False
        self._in_flight += 1
        try:
            try:
                async with self._client().post(self.endpoint, json=body) as response:
                    if response.status != 200:
                        detail = (await response.text())[:200].strip()
                        raise self._failed(f"answered HTTP {response.status}" + (f": {detail}" if detail else ""))
                    async for line in response.content:
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            ended = True
                            break
                        chunk = json.loads(data)
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or []:
                            if text := choice.get("text"):
                                first = first or time.monotonic() - started
                                parts.append(text)
                                yield text
                            reason = choice.get("finish_reason") or reason
            except ModelServerUnavailable:
                raise
            except TimeoutError:
                raise self._failed(f"sent nothing for {self.timeout_s:g} s") from None
            except aiohttp.ClientConnectorError:
                raise self._failed("can't be reached") from None
            except (aiohttp.ClientError, ConnectionError) as e:
                raise self._failed(f"broke off the reply ({type(e).__name__})") from None
            except (ValueError, AttributeError):
                raise self._failed("sent a stream that is not the completions format") from None
            if not ended or reason is None:
                raise self._failed("ended the reply before it was finished")
            self.fault = None
            tokens = int(usage.get("completion_tokens") or 0)
            self._generated += tokens
            yield Finished(
                "".join(parts).strip(),
                (),
                first,
                time.monotonic() - started,
                LENGTH if reason == "length" else STOP,
                int(usage.get("prompt_tokens") or len(prompt_ids)),
                int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0),
                completion_tokens=tokens,
            )
        finally:
            self._in_flight -= 1

    async def probe(self) -> bool:
        """Whether the model server generates now: a one-token completion. Callers that arrive
        while a probe runs share its answer. Clears `fault` when it succeeds."""
        seen = self._probes
        async with self._probing:
            if self._probes == seen:  # no probe ended while this one waited: ask the server
                try:
                    async with aclosing(self.stream([0], 1)) as items:
                        async for _ in items:
                            pass
                except ModelServerUnavailable:
                    pass
                self._probes += 1
        return self.fault is None

    async def close(self) -> None:
        self.closed = True
        if self._session is not None:
            await self._session.close()

    def stats(self) -> EngineStats:
        return EngineStats(0, self._in_flight, 0, 0, 0, self._generated)

    def in_flight(self) -> int:
        return self._in_flight
