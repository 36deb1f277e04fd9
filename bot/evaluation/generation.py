"""The bot's steps on evaluation cases (the reply policy on the batching engine) and the reference loss."""

from __future__ import annotations

import asyncio

import torch

from bot.config import ServeConfig, Settings
from bot.engine.batch_engine import BatchingEngine
from bot.engine.kv import common_prefix
from bot.engine.response_model import ResponseModel
from bot.engine.weights import Weights, call_constraint
from bot.evaluation.cases import Case, Prompted, prompted
from bot.policy.reply import ReplyPolicy
from bot.rendering import prompt_ids, render
from bot.training.batching import collate
from bot.training.loss import bot_token_nll


def _batches(items: list[Prompted], size: int, key) -> list[list[Prompted]]:
    ordered = sorted(items, key=key)  # similar lengths together: little padding
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def first_steps(settings: Settings, data, held_out: list[Case], mode: str, weights: Weights, on_reply=None):
    """Every held-out case prompted for `mode` (bot.evaluation.cases) and answered with the
    policy's first step, as `bot eval` and `bot tune` score them; returns the items."""
    cfg = settings.build.eval
    budget = settings.build.model.max_length - cfg.max_new_tokens
    items = [prompted(c, mode, data, weights.tokenizer, cfg.few_shot_k, budget) for c in held_out]
    policy_replies(
        weights,
        items,
        serve=settings.build.serve,
        max_batch=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        on_reply=on_reply,
    )
    return items


def policy_replies(
    weights: Weights,
    items: list[Prompted],
    *,
    serve: ServeConfig,
    max_batch: int,
    max_new_tokens: int,
    on_reply=None,
) -> None:
    """Each item's first step (set on `item.reply`) as the served bot takes it: the reply
    policy customers get (bot.policy.reply: the person rule, the tool-call constraint, argument
    checks, grounding, the leak guard), on the batching engine that serves customers, greedy."""
    tokenizer = weights.tokenizer
    prompts = [prompt_ids(tokenizer, item.messages) for item in items]
    if not items:
        return
    max_length = max(len(p) for p in prompts) + max_new_tokens
    policy = ReplyPolicy(serve.model_copy(update={"max_new_tokens": max_new_tokens}))

    async def run() -> None:
        engine = BatchingEngine(
            weights.model,
            tokenizer,
            max_length=max_length,
            max_batch=max_batch,
            max_queue=len(items),
            pinned_prefix=common_prefix(prompts),
            constraint=call_constraint(weights.model, tokenizer, weights.profile.actions),
            speculation=serve.speculates,
        )
        model_id = weights.trained.id if weights.trained else None
        model = ResponseModel(engine, tokenizer, weights.profile, model_id, max_length)
        try:
            await asyncio.gather(*(reply(model, item) for item in items))
        finally:
            await engine.close()

    async def reply(model: ResponseModel, item: Prompted) -> None:
        item.reply = await policy.first_step(model, item.messages)
        if on_reply:
            on_reply(1)

    asyncio.run(run())


@torch.no_grad()
def reference_losses(model, tokenizer, items: list[Prompted], *, batch_size: int) -> None:
    """The model's loss on the reference reply's tokens (the training mask: the reply and its
    end-of-turn token), summed per item, with the same prompt the mode generated from."""
    examples = {}
    for item in items:
        context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in item.messages]
        examples[id(item)] = render(tokenizer, context + [dict(item.case.reference, weight=1)])
    for batch in _batches(items, batch_size, key=lambda item: len(examples[id(item)])):
        collated = collate([examples[id(i)] for i in batch], tokenizer.pad_token_id)
        tensors = {k: v.to(model.device) for k, v in collated.items()}
        nll, mask = bot_token_nll(model, tensors)
        for row, item in enumerate(batch):
            item.loss = float(nll[row].sum())
            item.loss_tokens = int(mask[row].sum())
