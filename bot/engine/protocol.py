"""The interface everything that generates text depends on: the chat server, `bot chat`,
evaluation, the GPU check and the benchmarks. Shaped after vLLM's `EngineClient`
(vllm/engine/protocol.py): `stream()` is an async iterator per request, closing it cancels
that request only, and `close()` stops the engine's threads and frees its memory.

Three engines implement it: `BatchingEngine` (the default: one decode loop for every active
request, a shared prompt cache), `SerialEngine` (one `generate` call at a time, the
baseline it is measured against) and `RemoteEngine` (a model server's `/v1/completions`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from bot.data.grounding import GroundedValues
from bot.errors import BotError

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"  # why a request ended


class EngineError(BotError):
    """A request could not be generated."""


class PromptTooLong(EngineError):
    """The prompt and the room for the reply don't fit in the model's context."""


class EngineBusy(EngineError):
    """The queue of waiting requests is full: try again shortly."""


class EngineClosed(EngineError):
    """The engine was closed (the server is stopping, or a reload retired it)."""


@dataclass(frozen=True)
class Sampling:
    """How a request picks its tokens. `temperature` 0 is greedy decoding (the most likely token
    each step); above 0 each token is drawn from softmax(logits / temperature), after the
    tool-call constraint and `ignore_eos` have masked what may not come. A sampled request draws
    from its own random generator, seeded with `seed` (a random one when None), so the same
    seed, prompt and temperature give the same reply whatever else the engine is generating.
    EngineError for a value an engine can't take."""

    temperature: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t, seed = self.temperature, self.seed
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise EngineError(f"temperature must be a finite number (0 for greedy decoding), not {t!r}")
        if t < 0:
            raise EngineError(f"temperature must be 0 (greedy decoding) or more, not {t:g}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise EngineError(f"seed must be a whole number, not {seed!r}")


GREEDY = Sampling()


@dataclass(frozen=True)
class Decoding:
    """What one request may write, beside how it picks its tokens. `tool_call`: the reply is a
    tool call, under the tool-call constraint (EngineError from an engine without one).
    `text_only`: the reply may not open a tool call: OpenAI's `tool_choice: "none"` (the policy
    asks it after an action's repeat or the last allowed action). `grounded`: the values a
    grounded argument of a call may copy (bot.data.grounding). `adapter`: the LoRA adapter that
    writes it, by name, on an engine serving several on one base model (bot.engine.adapters);
    None: the engine's own weights. `excluded`: the calls the reply may not make, by name (the
    handoff's too): the policy asks again so after a handoff out of the blue or a call of an
    action the conversation holds no values for; an engine without the constraint ignores it."""

    tool_call: bool = False
    text_only: bool = False
    sampling: Sampling = GREEDY
    grounded: GroundedValues = ()
    adapter: str | None = None
    excluded: tuple[str, ...] = ()


PLAIN = Decoding()  # greedy text or a call, as the model chooses


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: what was generated and how it went."""

    text: str  # the whole reply, stripped
    token_ids: tuple[int, ...]
    first_token_s: float | None  # from the request to its first generated token
    seconds: float  # from the request to its end
    finish_reason: str  # STOP (end of turn), LENGTH (max_new_tokens) or CANCELLED
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prompt cache instead of computed
    completion_tokens: int | None = None  # set by an engine that gets a count but no ids (the remote engine)

    @property
    def tokens(self) -> int:
        return len(self.token_ids) if self.completion_tokens is None else self.completion_tokens


@dataclass(frozen=True)
class EngineStats:
    queued: int  # requests waiting for a row
    running: int  # rows being decoded
    kv_cache_bytes: int  # KV cache held: running rows and the prompt cache
    prompt_cache_hits: int  # requests that reused cached prompt tokens
    prompt_cache_misses: int
    generated_tokens: int
    decode_steps: int = 0  # forward passes that advanced running rows (prefills not counted)
    drafted_tokens: int = 0  # prompt-lookup guesses fed (bot.engine.speculation)
    accepted_tokens: int = 0  # guesses that were what greedy decoding picks
    forced_tokens: int = 0  # of the guesses, tokens the tool-call grammar forced


class Engine(ABC):
    """Token ids in, text out, for many requests at once."""

    name = "?"

    @abstractmethod
    def stream(
        self, prompt_ids: Sequence[int], max_new_tokens: int, decoding: Decoding = PLAIN
    ) -> AsyncIterator[str | Finished]:
        """Text pieces as they are generated, then one `Finished`. Raises an EngineError
        subclass for a request that can't be served. Closing the iterator early cancels this
        request alone. An engine with the tool-call constraint keeps any call the reply opens
        valid, its grounded arguments copied from `decoding.grounded`; `decoding.tool_call`
        makes the whole reply a call (structured output, OpenAI's tool_choice "required");
        `decoding.text_only` keeps it from opening one (tool_choice "none"; an engine without the
        constraint may still open one). Greedy unless `decoding.sampling` says otherwise."""

    @abstractmethod
    async def close(self) -> None:
        """Stop the engine's threads and free its memory; waiting requests get EngineClosed."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    def in_flight(self) -> int:
        """Requests submitted and not yet finished."""
