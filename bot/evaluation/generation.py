"""Greedy generation (through the batching engine) and reference loss, for evaluation."""

from __future__ import annotations

import asyncio

import torch

from bot.data.person_requests import PERSON_ASKED, PersonRequestRule, last_user_text
from bot.engine.batching import BatchingEngine
from bot.engine.constraint import ToolCallConstraint
from bot.engine.kv import common_prefix
from bot.engine.protocol import Finished
from bot.evaluation.cases import Prompted
from bot.rendering import handoff_step, parse_reply, prompt_ids, render
from bot.training.batching import collate
from bot.training.loss import bot_token_nll


def _batches(items: list[Prompted], size: int, key) -> list[list[Prompted]]:
    ordered = sorted(items, key=key)  # similar lengths together: little padding
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def generate_replies(
    model,
    tokenizer,
    items: list[Prompted],
    *,
    max_batch: int,
    max_new_tokens: int,
    on_reply=None,
    constraint: ToolCallConstraint | None = None,
    person_rule: PersonRequestRule | None = None,
) -> None:
    """Greedy replies for every item (set on `item.reply`) as the served bot gives them: a
    customer who asks for a person is handed off by `person_rule` before the model; the rest go
    through the batching engine that serves customers, with the same tool-call constraint."""
    to_generate = []
    for item in items:
        if person_rule and person_rule.asks_for_person(last_user_text(item.messages)):
            item.reply = handoff_step(PERSON_ASKED)
            if on_reply:
                on_reply(1)
        else:
            to_generate.append(item)
    items = to_generate
    if not items:
        return
    prompts = [prompt_ids(tokenizer, item.messages) for item in items]
    max_length = max(len(p) for p in prompts) + max_new_tokens

    async def run() -> None:
        engine = BatchingEngine(
            model,
            tokenizer,
            max_length=max_length,
            max_batch=max_batch,
            max_queue=len(items),
            pinned_prefix=common_prefix(prompts),
            constraint=constraint,
        )
        try:
            await asyncio.gather(*(reply(engine, item, ids) for item, ids in zip(items, prompts, strict=True)))
        finally:
            await engine.close()

    async def reply(engine, item: Prompted, ids: list[int]) -> None:
        async for out in engine.stream(ids, max_new_tokens):
            if isinstance(out, Finished):
                item.reply = parse_reply(out.text)
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
