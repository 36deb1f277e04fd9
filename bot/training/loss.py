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


# -- preference losses --------------------------------------------------------------------------
# The formulas are TRL's (trl/trainer/dpo_trainer.py, loss_type "sigmoid"; trl/trainer/kto_trainer.py,
# loss_type "kto", Eqn (7) of the KTO paper, arXiv:2402.01306), over summed log-probabilities of
# the reply's tokens. The project computes those itself: its loss mask is the rendering's (only the
# bot's tokens), which TRL's trainers can't take with a chat template that has no generation tags.


def reply_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the log-probability of its trained tokens (the reply): minus their summed loss."""
    nll, mask = bot_token_nll(model, batch)
    return -(nll * mask).sum(dim=1)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO's loss per pair: -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))."""
    import torch

    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -torch.nn.functional.logsigmoid(beta * margin)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO's loss per row, desirable rows first then undesirable ones (TRL's order). The
    reference point is the batch's KL estimate: the mean log-ratio of mismatched prompt and
    reply pairs, clamped at 0 and never differentiated."""
    import torch

    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    ratios = logps - ref_logps
    chosen = 1 - torch.sigmoid(beta * (ratios[desirable] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - ratios[~desirable]))
    return torch.cat((desirable_weight * chosen, undesirable_weight * rejected))
