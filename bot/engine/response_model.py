"""The response model as the server uses it: a generation engine (bot.engine) around the loaded
weights, with the tokenizer and the profile the model was trained with.

The prompt is rendered by `bot.rendering`, exactly as in training.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property

from bot import models
from bot.config import Settings
from bot.data.grounding import GroundedValues
from bot.data.leak_guard import LeakGuard
from bot.data.profile import BotProfile
from bot.engine.frontend import load_frontend
from bot.engine.protocol import GREEDY, Decoding, Engine, Finished, Sampling
from bot.engine.remote import ModelServerUnavailable, RemoteEngine
from bot.rendering import fitted_prompt_ids


@dataclass
class ResponseModel:
    """A loaded model ready to answer customers."""

    engine: Engine
    tokenizer: object
    profile: BotProfile
    model_id: str | None  # None: the base model with the persona prompt, no trained model yet
    max_length: int
    sampling: Sampling = GREEDY  # greedy, as customers get it; the conversation tests' pass^k tries sample
    loaded_at: float = field(default_factory=time.time)
    stage: str | None = None  # an interim model's own description, e.g. "base (fine-tuning in progress)"

    def __post_init__(self):
        # The person-request classifier is fitted now (about a second), where the model is loaded,
        # not on the event loop when the first customer's message arrives.
        self.profile.person_detector.classifier  # noqa: B018

    @cached_property
    def leak_guard(self) -> LeakGuard:
        """Checks every text of this model's replies against its own prompt and secret."""
        return LeakGuard.of(self.profile)

    @property
    def description(self) -> str:
        if self.stage:
            return self.stage
        if self.model_id:
            return f"trained model {self.model_id}"
        return "the base model with the persona prompt (no trained model yet: run 'bot train')"

    def prompt(self, messages: list[dict], max_new_tokens: int, gone: threading.Event | None = None) -> list[int]:
        """System prompt + as much recent history as leaves room for the reply. Once `gone` is
        set, RenderCancelled (checked between exchanges)."""
        cancelled = gone.is_set if gone else None
        return fitted_prompt_ids(self.tokenizer, messages, self.max_length - max_new_tokens, cancelled=cancelled)

    async def stream(
        self,
        messages: list[dict],
        max_new_tokens: int,
        *,
        grounded: GroundedValues = (),
        text_only: bool = False,
        excluded: tuple[str, ...] = (),
    ) -> AsyncIterator[str | Finished]:
        """Text pieces of the reply to `messages`, then the `Finished` record; a tool call's
        grounded arguments copy one of `grounded` (bot.data.grounding); `text_only`: the reply
        may not call; `excluded`: the calls it may not make, the handoff's name among them
        (see Decoding). Closing the iterator early (the client went away) cancels the generation, and the prompt's
        rendering if it is still running: a thread can't be cancelled, so it is told to stop."""
        gone = threading.Event()
        try:
            ids = await asyncio.to_thread(self.prompt, messages, max_new_tokens, gone)  # a few ms: off the event loop
        finally:
            gone.set()  # the thread ends at its next check if this await was cancelled; a no-op otherwise
        decoding = Decoding(text_only=text_only, sampling=self.sampling, grounded=grounded, excluded=excluded)
        stream = self.engine.stream(ids, max_new_tokens, decoding)
        async for item in stream:
            yield item

    async def close(self) -> None:
        await self.engine.close()


def load_response_model(settings: Settings, *, engine: str | None = None, ignore_eos: bool = False) -> ResponseModel:
    """The active trained model (adapter merged in), or the base model when none is trained.
    `engine` overrides `serve.engine`; `ignore_eos` (benchmarks only) writes every reply to
    its full length. With endpoints.yml's `model_server.url`, a remote engine instead: no weights."""
    if settings.endpoints.model_server.url:
        return remote_response_model(settings)
    from bot.engine.weights import load_weights, start_engine  # torch: only where the weights are

    weights = load_weights(settings, models.active(settings.models_dir))
    max_length = settings.build.model.max_length
    return ResponseModel(
        start_engine(weights, settings.build.serve, max_length, kind=engine, ignore_eos=ignore_eos),
        weights.tokenizer,
        weights.profile,
        weights.trained.id if weights.trained else None,
        max_length,
    )


def remote_response_model(settings: Settings) -> ResponseModel:
    """The tokenizer and profile of the active model (or the base model), generating on the
    model server of endpoints.yml's `model_server`, under the model's id (vLLM's adapter name),
    or `base` when none is trained (the name `bot serve` lists in /v1/models; give vLLM
    `--served-model-name base`), unless `model_server.model` names another."""
    server = settings.endpoints.model_server
    front = load_frontend(settings, models.active(settings.models_dir))
    name = server.model or (front.trained.id if front.trained else "base")
    api_key = os.environ.get(server.api_key_env) if server.api_key_env else None
    if server.api_key_env and not api_key:
        raise ModelServerUnavailable(
            f"endpoints.yml model_server.api_key_env names {server.api_key_env}, which is not set"
        )
    engine = RemoteEngine(server.url, name, timeout_s=server.timeout_s, api_key=api_key)
    trained_id = front.trained.id if front.trained else None
    return ResponseModel(engine, front.tokenizer, front.profile, trained_id, settings.build.model.max_length)
