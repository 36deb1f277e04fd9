"""Batched greedy generation and reference loss, for evaluation."""

from __future__ import annotations

import torch

from bot.evaluation.cases import Prompted
from bot.rendering import parse_reply, prompt_ids, render
from bot.training.batching import collate
from bot.training.recipe import bot_token_nll


def _batches(items: list[Prompted], size: int, key) -> list[list[Prompted]]:
    ordered = sorted(items, key=key)  # similar lengths together: little padding
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


@torch.no_grad()
def generate_replies(model, tokenizer, items: list[Prompted], *, batch_size: int, max_new_tokens: int, on_batch=None) -> None:
    """Greedy replies for every item (set on `item.reply`); prompts are left-padded so that all
    rows of a batch continue from their last real token."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompts = {id(item): prompt_ids(tokenizer, item.messages) for item in items}
    for batch in _batches(items, batch_size, key=lambda item: len(prompts[id(item)])):
        width = max(len(prompts[id(item)]) for item in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            ids = prompts[id(item)]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for row, item in enumerate(batch):
            new = out[row, width:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            item.reply = parse_reply(tokenizer.decode(new, skip_special_tokens=True).strip())
        if on_batch:
            on_batch(len(batch))


@torch.no_grad()
def reference_losses(model, tokenizer, items: list[Prompted], *, batch_size: int) -> None:
    """The model's loss on the reference reply's tokens (the training mask: the reply and its
    end-of-turn token), summed per item, with the same prompt the mode generated from."""
    examples = {}
    for item in items:
        context = [dict(m, weight=0) if m["role"] == "assistant" else m for m in item.messages]
        examples[id(item)] = render(tokenizer, context + [dict(item.case.reference, weight=1)])
    for batch in _batches(items, batch_size, key=lambda item: len(examples[id(item)])):
        tensors = {k: v.to(model.device) for k, v in collate([examples[id(i)] for i in batch], tokenizer.pad_token_id).items()}
        nll, mask = bot_token_nll(model, tensors)
        for row, item in enumerate(batch):
            item.loss = float(nll[row].sum())
            item.loss_tokens = int(mask[row].sum())
