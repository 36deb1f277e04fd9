"""What the engines share: a request as the engine thread sees it, and the bridge from that
thread to the asyncio task reading the stream."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from bot.engine.adapters import BASE, AdapterBank, AdapterError
from bot.engine.constraint import CallFollower, ToolCallConstraint
from bot.engine.protocol import (
    CANCELLED,
    GREEDY,
    PLAIN,
    Decoding,
    Engine,
    EngineBusy,
    EngineClosed,
    EngineError,
    Finished,
    PromptTooLong,
    Sampling,
)
from bot.engine.text import IncrementalText

_ids = itertools.count(1)
T = TypeVar("T")


class Request:
    """One prompt to continue. The engine thread calls `token` and `finish` (or `fail`); the
    stream reading it sets `cancelled` when its reader goes away. `sampling`'s temperature 0:
    greedy; above 0 the engine samples with `generator(device)`, this request's own generator."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        tokenizer,
        loop: asyncio.AbstractEventLoop,
        *,
        sampling: Sampling = GREEDY,
    ):
        self.id = next(_ids)
        self.temperature = float(sampling.temperature)
        seed = sampling.seed
        self.seed = secrets.randbits(64) if seed is None else seed % 2**64  # torch takes 64-bit seeds
        self._generator: torch.Generator | None = None
        self.prompt = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.loop = loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.text = IncrementalText(tokenizer)
        self.started = time.monotonic()
        self.first_token_s: float | None = None
        self.cached_tokens = 0
        self.done = False
        self.calls: CallFollower | None = None  # set when the engine constrains tool calls
        self.adapter = 0  # the LoRA adapter's index in the engine's AdapterBank; 0: the engine's own weights

    @property
    def generated(self) -> list[int]:
        return self.text.ids

    def generator(self, device: torch.device) -> torch.Generator:
        """This request's random generator, on the device its logits are on (made on first use)."""
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the reader's event loop is gone
            self.cancelled = True

    def token(self, token_id: int) -> None:
        """A generated token that belongs to the reply (an end-of-turn token does not)."""
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.started
        piece = self.text.add(token_id)
        if self.calls:
            self.calls.observe(self.generated, self.text.sent)
        if piece:
            self._send(piece)

    def finish(self, reason: str) -> Finished:
        self.done = True
        result = Finished(
            text=self.text.text.rstrip("\ufffd").strip(),  # a character cut off at the token limit is dropped
            token_ids=tuple(self.generated),
            first_token_s=self.first_token_s,
            seconds=time.monotonic() - self.started,
            finish_reason=CANCELLED if self.cancelled else reason,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached_tokens,
        )
        self._send(result)
        return result

    def fail(self, error: BaseException) -> None:
        self.done = True
        self._send(error)


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def leave_cores_to_engines() -> None:
    """Run this thread's torch work on one core. torch's CPU kernels use OpenMP (libgomp), which
    keeps a pool of worker threads for every thread that ever ran parallel work; once the
    pools hold more threads than there are cores, every worker sleeps between kernels instead
    of spinning, and a decode step of the 135M model on this 2-core CPU takes 58 ms instead of
    40. So only engine threads compute on all cores; loading models runs on one."""
    torch.set_num_threads(1)


def pick_tokens(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
    """The next token of each row of `logits` (float32 [rows, vocabulary], already masked with
    -inf where a token may not come; `requests` in row order, none for a row that is greedy):
    the most likely one, or for a request with a temperature above 0 one drawn from
    softmax(logits / temperature) with that request's generator. The draw of a row depends on
    its own logits and generator alone, never on the other rows."""
    tokens = logits.argmax(-1)
    sampled = [b for b, request in enumerate(requests) if request.temperature > 0]
    if not sampled:
        return tokens
    device = logits.device
    rows = torch.tensor(sampled, device=device)
    temperatures = torch.tensor([requests[b].temperature for b in sampled], dtype=torch.float32, device=device)
    best = tokens.index_select(0, rows)
    scaled = logits.index_select(0, rows)
    scaled = (scaled - scaled.amax(-1, keepdim=True)) / temperatures[:, None]  # <= 0, and 0 at the best token
    # A row with every token masked (or a temperature that underflows float32) gives NaN: such a
    # row keeps its most likely token, as greedy decoding would pick.
    scaled.masked_fill_(scaled.isnan(), float("-inf")).scatter_(1, best[:, None], 0.0)
    probabilities = torch.softmax(scaled, -1)
    draws = [
        torch.multinomial(probabilities[i], 1, generator=requests[b].generator(device)) for i, b in enumerate(sampled)
    ]
    tokens[rows] = torch.cat(draws)
    return tokens


def stop_token_ids(model, tokenizer) -> set[int]:
    """End-of-turn tokens: the tokenizer's and the model's generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


class ThreadedEngine(Engine):
    """An engine whose work happens in one thread: `submit` puts a request in the first-come
    queue `waiting`, the thread takes it from there (`_run`), and `stream` turns what the thread
    sends back into an async iterator. That thread alone uses all the cores for torch (see
    `leave_cores_to_engines`). A subclass sets itself up, then calls `self.thread.start()`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int,
        max_queue: int = 256,
        ignore_eos: bool = False,
        constraint: ToolCallConstraint | None = None,
        adapters: AdapterBank | None = None,
    ):
        self.model = model.eval()
        self.constraint = constraint
        self.adapters = adapters
        self.tokenizer = tokenizer
        self.max_length, self.max_queue, self.ignore_eos = max_length, max_queue, ignore_eos
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.wake = threading.Condition()  # guards `waiting` and `closed`; notified on every change
        self.waiting: deque[Request] = deque()
        self.jobs: list[tuple[Callable[[], object], concurrent.futures.Future]] = []
        self.closed = False
        self._in_flight = 0
        self.generated_tokens = 0
        self.thread = threading.Thread(target=self._thread, name=f"engine-{self.name}", daemon=True)

    def _run(self) -> None:
        """Serve requests until `closed` is set."""
        raise NotImplementedError

    def _release(self) -> list[Request]:
        """Free what the engine holds; returns the requests it was still working on."""
        return []

    def _running(self) -> list[Request]:
        """The requests being generated now (between steps)."""
        return []

    def _forget_adapters(self, kept: set[int]) -> None:
        """Drop what is cached for adapter slots other than `kept`."""

    def between_steps(self, job: Callable[[], T]) -> concurrent.futures.Future[T]:
        """`job` to run in the engine thread between two steps, when nothing is computing (for
        what must not change in the middle of a forward pass); its result, from any thread
        (`.result()`) or coroutine (`await asyncio.wrap_future(...)`)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self.wake:
            if self.closed:
                raise EngineClosed("the model engine is closed")
            self.jobs.append((job, future))
            self.wake.notify_all()
        return future

    def _run_jobs(self) -> None:
        with self.wake:
            jobs, self.jobs = self.jobs, []
        for job, future in jobs:
            try:
                future.set_result(job())
            except Exception as e:  # the caller's to handle
                future.set_exception(e)

    async def load_adapter(self, name: str, folder: Path) -> int:
        """Serve `name`'s requests from now on with the LoRA adapter in `folder`, loaded beside
        the others on the same base model; requests already under way finish with the adapter
        they started with. AdapterError for an adapter that doesn't fit this base model.
        `load_adapter_waiting` does the same from a thread."""
        return await asyncio.wrap_future(self._adapter_job(name, folder))

    def load_adapter_waiting(self, name: str, folder: Path) -> int:
        """`load_adapter` from a thread other than the engine's (a model loader's): waits for it."""
        return self._adapter_job(name, folder).result()

    def _adapter_job(self, name: str, folder: Path) -> concurrent.futures.Future[int]:
        if self.adapters is None:
            raise EngineError("this engine serves one model: it takes no adapters")
        return self.between_steps(
            lambda: self._change_adapters(lambda live: self.adapters.load(name, folder, live=live))
        )

    async def unload_adapter(self, name: str) -> None:
        """Serve `name` no more: requests already under way finish with it, new ones are refused."""
        if self.adapters is None:
            return
        try:
            await asyncio.wrap_future(
                self.between_steps(lambda: self._change_adapters(lambda live: self.adapters.unload(name)))
            )
        except EngineClosed:  # nothing to free
            pass

    def _change_adapters(self, change: Callable[[set[int]], int | None]) -> int | None:
        """`change` (given the slots requests still use; it returns the slot it filled, if any),
        then the prompt cache kept only for the slots still served or used: never a slot's
        former adapter's KV for the adapter that now has it."""
        with self.wake:
            live = {r.adapter for r in self.waiting} | {r.adapter for r in self._running()}
        filled = change(live)
        self._forget_adapters((live | set(self.adapters.indices.values()) | {BASE}) - {filled})
        return filled

    def _thread(self) -> None:
        torch.set_num_threads(CORES)
        try:
            with torch.inference_mode():
                self._run()
        finally:
            with self.wake:
                left = list(self.waiting)
                self.waiting.clear()
                jobs, self.jobs = self.jobs, []
            for _, future in jobs:
                future.set_exception(EngineClosed("the model engine was closed"))
            for request in left + self._release():
                request.fail(EngineClosed("the model engine was closed before this request finished"))

    def submit(self, request: Request) -> None:
        with self.wake:
            if self.closed:
                raise EngineClosed("the model engine is closed")
            if len(self.waiting) >= self.max_queue:
                raise EngineBusy(f"{len(self.waiting)} requests are already waiting for the model: try again shortly")
            self.waiting.append(request)
            self.wake.notify_all()

    async def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify_all()
        await asyncio.to_thread(self.thread.join)

    def in_flight(self) -> int:
        return self._in_flight

    def check(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        if self.closed:
            raise EngineClosed("the model engine is closed")
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty")
        if len(prompt_ids) + max_new_tokens > self.max_length:
            raise PromptTooLong(
                f"the prompt is {len(prompt_ids):,} tokens; with room for {max_new_tokens:,} more it exceeds the "
                f"model's context of {self.max_length:,} tokens"
            )
        vocabulary = len(self.tokenizer)
        if not all(0 <= t < vocabulary for t in prompt_ids):
            raise PromptTooLong(f"the prompt has token ids outside the vocabulary (0..{vocabulary - 1})")

    async def stream(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        decoding: Decoding = PLAIN,
        *,
        constraint: ToolCallConstraint | None = None,
    ) -> AsyncIterator[str | Finished]:
        """`constraint`: in place of the engine's own (an AdapterEngine's: its brand's actions)."""
        constraint = constraint or self.constraint
        self.check(prompt_ids, max_new_tokens)
        if decoding.tool_call and not constraint:
            raise EngineError("this engine has no tool-call constraint")
        loop = asyncio.get_running_loop()
        request = Request(prompt_ids, max_new_tokens, self.tokenizer, loop, sampling=decoding.sampling)
        if decoding.adapter is not None:
            if self.adapters is None:
                raise EngineError(f"this engine serves one model: no adapter {decoding.adapter!r}")
            try:
                request.adapter = self.adapters.index(decoding.adapter)
            except AdapterError as e:
                raise EngineError(str(e)) from None
        if constraint:
            request.calls = constraint.follow(
                forced=decoding.tool_call,
                text_only=decoding.text_only,
                grounded=decoding.grounded,
                excluded=decoding.excluded,
            )
        self._in_flight += 1
        try:
            self.submit(request)
            while True:
                item = await request.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self._in_flight -= 1
            if not request.done:
                request.cancelled = True
                with self.wake:
                    self.wake.notify_all()
