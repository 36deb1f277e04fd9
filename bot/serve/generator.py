"""The response model as the server uses it: weights, tokenizer and the profile it was trained
with, and generation that streams text into the event loop while it runs in a worker thread.

The prompt is rendered by `bot.rendering`, exactly as in training. Generation stops at the
end-of-turn token, at `max_new_tokens`, or as soon as `stop` is set (the client went away).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from bot import models
from bot.base_model import load_model, load_tokenizer
from bot.config import Settings
from bot.data.profile import BotProfile, profile_of, read_profile
from bot.data.project import validate
from bot.rendering import fitted_prompt_ids


@dataclass
class Generated:
    text: str = ""
    tokens: int = 0
    first_token_s: float | None = None  # seconds from the call to the first generated token
    seconds: float = 0.0


class _Streamer(TextStreamer):
    """transformers' word-safe incremental decoding, handing each finished piece to `on_text`."""

    def __init__(self, tokenizer, on_text: Callable[[str], None], result: Generated, started: float):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text, self._result, self._started = on_text, result, started

    def put(self, value):
        if not self.next_tokens_are_prompt:
            self._result.tokens += value.numel()
            if self._result.first_token_s is None:
                self._result.first_token_s = time.monotonic() - self._started
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ResponseModel:
    """A loaded model ready to answer customers."""

    model: object
    tokenizer: object
    profile: BotProfile
    model_id: str | None  # None: the base model with the persona prompt, no trained model yet
    max_length: int
    loaded_at: float = field(default_factory=time.time)

    @property
    def description(self) -> str:
        if self.model_id:
            return f"trained model {self.model_id}"
        return "the base model with the persona prompt (no trained model yet: run 'bot train')"

    def prompt(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """System prompt + as much recent history as leaves room for the reply."""
        return fitted_prompt_ids(self.tokenizer, messages, self.max_length - max_new_tokens)

    @torch.inference_mode()
    def generate(
        self,
        messages: list[dict],
        max_new_tokens: int,
        on_text: Callable[[str], None] = lambda text: None,
        stop: threading.Event | None = None,
    ) -> Generated:
        """Greedy reply to `messages` (blocking; run it in a worker thread)."""
        started = time.monotonic()
        result = Generated()
        pieces: list[str] = []

        def collect(text: str) -> None:
            pieces.append(text)
            on_text(text)

        ids = torch.tensor([self.prompt(messages, max_new_tokens)], device=self.model.device)
        self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=_Streamer(self.tokenizer, collect, result, started),
            stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop or threading.Event())]),
        )
        result.text = "".join(pieces).strip()
        result.seconds = time.monotonic() - started
        return result


async def stream(
    response_model: ResponseModel, messages: list[dict], max_new_tokens: int, executor: Executor | None = None
) -> AsyncIterator[str | Generated]:
    """Yields text pieces as the model writes them, then the finished `Generated`. Closing the
    iterator early (the client went away) stops the generation at its next token."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    stop = threading.Event()
    job = loop.run_in_executor(
        executor, response_model.generate, messages, max_new_tokens, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text), stop
    )
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():  # pieces that arrived just before the end
                yield queue.get_nowait()
            yield job.result()
            return
    finally:
        stop.set()


def _profile(settings: Settings, trained: models.TrainedModel | None) -> BotProfile:
    stored = read_profile(trained.folder) if trained else None
    return stored or profile_of(validate(settings))


def load_response_model(settings: Settings) -> ResponseModel:
    """The active trained model (adapter merged in), or the base model when none is trained."""
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = models.active(settings.models_dir)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    if trained:
        model = models.load_merged(trained, settings.base_model, settings.cache_dir, dtype)
    else:
        model = load_model(settings.base_model, settings.cache_dir, dtype).eval()
    return ResponseModel(model.to(device), tokenizer, _profile(settings, trained), trained.id if trained else None, settings.build.model.max_length)
