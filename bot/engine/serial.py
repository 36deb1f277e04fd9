"""The serial engine: one transformers `generate` call at a time, in one thread. This is how the
server answered before it batched; it stays as the baseline the batching engine is measured
against (`serve.engine: serial`)."""

from __future__ import annotations

import logging

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from bot.engine.protocol import CANCELLED, LENGTH, STOP, EngineClosed, EngineError, EngineStats
from bot.engine.requests import Request, ThreadedEngine, pick_tokens

log = logging.getLogger("bot.engine")


class _Tokens(BaseStreamer):
    """Hands each generated token to the request (the first `put` is the prompt)."""

    def __init__(self, request: Request, stop_ids: set[int], engine: SerialEngine):
        self.request, self.stop_ids, self.engine = request, stop_ids, engine
        self.prompt_seen = False
        self.stopped = False  # an end-of-turn token came

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids and not self.engine.ignore_eos:
                self.stopped = True
            elif not self.stopped:
                self.request.token(token)
                self.engine.generated_tokens += 1

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    """Stops `generate` after the current token once its reader has gone or the engine is closing."""

    def __init__(self, request: Request, engine: SerialEngine):
        self.request, self.engine = request, engine

    def __call__(self, input_ids, scores, **kwargs):
        stop = self.request.cancelled or self.engine.closed
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _FollowCalls(LogitsProcessor):
    """The tool-call constraint (bot.engine.constraint) inside `generate`."""

    def __init__(self, request: Request):
        self.request = request

    def __call__(self, input_ids, scores):
        calls = self.request.calls
        if calls and calls.active:
            scores[0].masked_fill_(~calls.allowed().to(scores.device), float("-inf"))
        return scores


class _Sample(LogitsProcessor):
    """Sampling inside a greedy `generate`: draws the next token as the batching engine does
    (`pick_tokens`: softmax(scores / temperature), the request's own generator) and leaves only
    that token possible, so the same seed gives the same reply from either engine and no
    request touches the global random state."""

    def __init__(self, request: Request):
        self.request = request

    def __call__(self, input_ids, scores):
        token = pick_tokens(scores.float(), [self.request])
        return torch.full_like(scores, float("-inf")).scatter_(1, token[:, None], 0.0)


class SerialEngine(ThreadedEngine):
    name = "serial"

    def __init__(
        self, model, tokenizer, *, max_batch=None, kv_cache_mb=None, prefill_tokens=None, pinned_prefix=None, **options
    ):
        """`options` as ThreadedEngine takes them; the batching engine's own are accepted and
        mean nothing here."""
        super().__init__(model, tokenizer, **options)
        self.running = 0
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.closed and not self.waiting and not self.jobs:
                    self.wake.wait()
                if self.closed:
                    return
            self._run_jobs()
            with self.wake:
                if not self.waiting:
                    continue
                request = self.waiting.popleft()
            if request.cancelled:
                request.finish(CANCELLED)
                continue
            self.running = 1
            try:
                self._generate(request)
            except Exception as e:
                log.exception("request %d failed", request.id)
                request.fail(EngineError(f"generation failed: {type(e).__name__}"))
            finally:
                self.running = 0

    def _generate(self, request: Request) -> None:
        device = next(self.model.parameters()).device
        ids = torch.tensor([request.prompt], device=device)
        streamer = _Tokens(request, self.stop_ids, self)
        if self.adapters:
            self.adapters.route([request.adapter])
        self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.max_new_tokens if self.ignore_eos else None,
            do_sample=False,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(request, self)]),
            logits_processor=LogitsProcessorList(
                [_FollowCalls(request)] + ([_Sample(request)] if request.temperature > 0 else [])
            ),
        )
        if self.closed and not streamer.stopped and not request.cancelled:  # cut short by close(): not a reply
            request.fail(EngineClosed("the model engine was closed before this request finished"))
            return
        request.finish(STOP if streamer.stopped else LENGTH)

    def stats(self) -> EngineStats:
        return EngineStats(len(self.waiting), self.running, 0, 0, 0, self.generated_tokens)
