"""The loss on the bot's tokens, shared by training (bot/training/recipe.py), its held-out loss,
and evaluation's reference losses (bot/evaluation/generation.py).

The labels come from bot/rendering.py, where IGNORE_INDEX marks the tokens that are not trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.rendering import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def bot_token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, mask), each rows x positions: the loss of every trained (bot) token and where they
    are. The output layer runs only at positions that predict one of them (a sixth of a
    dialogue): projecting every position onto the 49k-token vocabulary would cost a fifth of the
    step and a gigabyte of logits."""
    import torch

    # Position i predicts token i+1: the labels are shifted left by one against the logits.
    targets = batch["labels"][:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions
    ).logits
    targets = targets[:, positions]
    # One row per (row, position), the vocabulary last: the layout cross-entropy's fast path takes.
    # The (rows, vocabulary, positions) layout was 3x slower and 12x further from a float64
    # reference (docs/benchmarks.md: Where a training step's time goes).
    nll = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
    return nll, targets != IGNORE_INDEX


def bot_token_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the trained (bot) tokens of a batch: their mean, or their sum."""
    nll, mask = bot_token_nll(model, batch)
    return nll.sum() / mask.sum() if reduction == "mean" else nll.sum()


def trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens of a batch the loss counts (the labels' non-ignored targets)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
