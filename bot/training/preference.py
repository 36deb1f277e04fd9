"""The preference stage of `bot train`: after supervised fine-tuning, KTO on rated replies or
DPO on agents' replies against the bot's (build/preferences.jsonl, from the reviewed
training_data/preferences/), with the supervised adapter as the reference model.

The reference is frozen by construction: its log-probabilities are computed once, with the
supervised adapter, before the first step (TRL's `precompute_ref_log_probs`), so no second copy
of the model is kept. KTO's reference point pairs each row's context with the next row's reply
in the same batch (TRL's KL estimate); the batches are fixed once, so those pairs have reference
log-probabilities too. The losses are bot/training/loss.py's.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bot import models
from bot.config import PreferenceConfig
from bot.errors import BotError
from bot.rendering import IGNORE_INDEX, Example, render_within
from bot.training.batching import collate
from bot.training.loss import dpo_loss, kto_loss, reply_logps
from bot.training.recipe import StepProgress, TrainingInterrupted, load_checkpoint, save_training_state

REFERENCE_FILE = "reference.pt"  # the reference log-probabilities, as first computed


class NoPreferenceData(BotError):
    """The preference stage is on but there is nothing it can train on."""


@dataclass
class StageProgress:
    """What the stage's checkpoint records beside the weights, optimizer and RNG states."""

    rows: list[str] = field(default_factory=list)  # the rows' ids: a resumed stage must see the same
    epoch: int = 0
    batches_done: int = 0  # of the current epoch, in its shuffled order
    step: int = 0
    losses: list[float] = field(default_factory=list)
    smoothed: float | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PreferenceRows:
    """Rendered preference data: per row its reply (and for DPO the rejected reply) as examples
    whose only trained tokens are the reply's."""

    chosen: list[Example]
    rejected: list[Example | None]
    desirable: list[bool | None]
    ids: list[str]

    @property
    def up(self) -> int:
        return sum(1 for d in self.desirable if d is True)

    @property
    def down(self) -> int:
        return sum(1 for d in self.desirable if d is False)


def _last(tokenizer, messages: list[dict], max_length: int, name: str) -> Example:
    return render_within(tokenizer, messages, max_length, name=name)[-1]  # a long context is cut at user turns


def load_preference_rows(path: Path, tokenizer, max_length: int, method: str) -> PreferenceRows:
    """The rows `method` trains on: KTO takes the rated ones, DPO the pairs."""
    chosen, rejected, desirable, ids = [], [], [], []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        row = json.loads(line)
        if (method == "kto") != ("desirable" in row):
            continue
        name = f"preference '{row['id']}'"
        chosen.append(_last(tokenizer, row["messages"], max_length, name))
        rejected.append(_last(tokenizer, row["rejected_messages"], max_length, name) if method == "dpo" else None)
        desirable.append(row.get("desirable"))
        ids.append(row["id"])
    return PreferenceRows(chosen, rejected, desirable, ids)


def mismatched(rows: PreferenceRows, batch: list[int]) -> list[Example]:
    """KTO's KL rows for a batch: each row's context with the next row's reply (trained tokens:
    the reply's). Built from token ids: the context is the row's tokens up to its reply."""
    out = []
    for k, i in enumerate(batch):
        j = batch[(k + 1) % len(batch)]
        context_end = _reply_start(rows.chosen[i])
        reply_start = _reply_start(rows.chosen[j])
        reply = rows.chosen[j].input_ids[reply_start:]
        ids = rows.chosen[i].input_ids[:context_end] + reply
        labels = [IGNORE_INDEX] * context_end + rows.chosen[j].labels[reply_start:]
        out.append(Example(ids, labels))
    return out


def _reply_start(example: Example) -> int:
    return next(n for n, label in enumerate(example.labels) if label != IGNORE_INDEX)


class PreferenceStage:
    """Runs on the recipe's model (the supervised adapter, trainable) and accelerator."""

    def __init__(
        self,
        model,
        accelerator,
        tokenizer,
        rows: PreferenceRows,
        cfg: PreferenceConfig,
        *,
        seed: int,
        progress_bar: bool = True,
        on_step: Callable[[StepProgress], None] | None = None,
        report: Callable[[str], None] = lambda message: None,
    ):
        if cfg.method == "kto" and not (rows.up and rows.down):
            raise NoPreferenceData(
                f"KTO needs replies rated up and replies rated down: {rows.up} up, {rows.down} down"
            )
        if not rows.ids:
            raise NoPreferenceData(f"no preference rows for {cfg.method.upper()}")
        self.model, self.accelerator, self.tokenizer, self.rows, self.cfg = model, accelerator, tokenizer, rows, cfg
        self.progress_bar, self.on_step, self.report = progress_bar, on_step, report
        order = list(range(len(rows.ids)))
        random.Random(seed).shuffle(order)
        size = min(cfg.batch_size, len(order))
        self.batches = [order[i : i + size] for i in range(0, len(order), size)]
        if cfg.method == "kto" and len(self.batches) > 1 and len(self.batches[-1]) == 1:
            last = self.batches.pop()  # the KL estimate needs two rows: the lone one joins the batch before
            self.batches[-1] += last
        self.seed = seed
        # KTO's mismatched rows: the same for every epoch and for the reference
        self.kl_rows = [mismatched(rows, batch) for batch in self.batches] if cfg.method == "kto" else []
        # TRL: desirable_weight x #up : undesirable_weight x #down between 1:1 and 4:3
        self.desirable_weight = cfg.desirable_weight or (
            rows.down * cfg.undesirable_weight / rows.up if rows.up else 1.0
        )
        self.progress = StageProgress(rows=list(rows.ids))

    def _logps(self, examples: list[Example], *, grad: bool) -> torch.Tensor:
        batch = {k: v.to(self.accelerator.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return reply_logps(self.model, batch).float()

    def _reference(self) -> dict:
        """The supervised model's log-probabilities of everything the stage compares, once."""
        self.model.eval()
        rows, ref = self.rows, {}
        for b, batch in enumerate(self.batches):
            ref[("chosen", b)] = self._logps([rows.chosen[i] for i in batch], grad=False)
            if self.cfg.method == "dpo":
                ref[("rejected", b)] = self._logps([rows.rejected[i] for i in batch], grad=False)
            else:
                ref[("kl", b)] = self._logps(self.kl_rows[b], grad=False)
        self.model.train()
        return ref

    def loss(self, b: int, ref: dict) -> torch.Tensor:
        rows, batch, cfg = self.rows, self.batches[b], self.cfg
        logps = self._logps([rows.chosen[i] for i in batch], grad=True)
        if cfg.method == "dpo":
            rejected = self._logps([rows.rejected[i] for i in batch], grad=True)
            return dpo_loss(logps, rejected, ref[("chosen", b)], ref[("rejected", b)], cfg.beta).mean()
        kl = self._logps(self.kl_rows[b], grad=False)
        desirable = torch.tensor([bool(rows.desirable[i]) for i in batch], device=logps.device)
        return kto_loss(
            logps,
            ref[("chosen", b)],
            desirable,
            kl,
            ref[("kl", b)],
            beta=cfg.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
        ).mean()

    def run(self, checkpoint: Path, *, resume: bool = False, checkpoint_every: int = 50) -> dict:
        """Train, with a checkpoint in `checkpoint` every `checkpoint_every` steps and when it stops
        early (Ctrl-C: TrainingInterrupted; an error surfaces as it is); `resume`: go on from
        the checkpoint there. Returns what the model's manifest records about the stage."""
        from tqdm.auto import tqdm

        cfg, accelerator, progress = self.cfg, self.accelerator, self.progress
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
        steps = len(self.batches) * cfg.epochs
        warmup = max(1, math.ceil(0.1 * steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        if resume:
            saved = StageProgress(**json.loads((checkpoint / "progress.json").read_text()))
            if saved.rows != progress.rows:
                raise BotError(
                    f"the reviewed preference data changed since the stage in {checkpoint.parent.name} started: "
                    "train anew (without --resume)"
                )
            self.progress = progress = saved
            ref = torch.load(checkpoint / REFERENCE_FILE, map_location=accelerator.device, weights_only=False)
            load_checkpoint(checkpoint, accelerator, self.model, optimizer, scheduler)
            self.report(f"resuming the preference stage at step {progress.step} of {steps}")
        else:
            ref = self._reference()
            checkpoint.mkdir(parents=True, exist_ok=True)
            torch.save(ref, checkpoint / REFERENCE_FILE)

        def save() -> None:
            save_training_state(checkpoint, accelerator, self.model, optimizer, scheduler)
            models.write_json(checkpoint / "progress.json", asdict(progress))

        bar = tqdm(
            total=steps,
            initial=progress.step,
            disable=not (self.progress_bar and accelerator.is_main_process),
            unit="step",
            desc=f"preference stage ({cfg.method.upper()})",
            dynamic_ncols=True,
        )
        started, first_step = time.monotonic() - progress.seconds, progress.step
        loop_start = time.monotonic()  # this run's pace gives the ETA
        self.model.train()
        try:
            while progress.epoch < cfg.epochs:
                order = list(range(len(self.batches)))
                random.Random(self.seed * 1000 + progress.epoch).shuffle(order)
                for b in order[progress.batches_done :]:
                    loss = self.loss(b, ref)
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    progress.step += 1
                    progress.batches_done += 1
                    value = loss.item()
                    progress.losses.append(value)
                    smoothed = value if progress.smoothed is None else 0.9 * progress.smoothed + 0.1 * value
                    progress.smoothed = smoothed
                    progress.seconds = time.monotonic() - started
                    bar.set_postfix(loss=f"{smoothed:.4f}")
                    bar.update(1)
                    if self.on_step is not None and accelerator.is_main_process:
                        elapsed = time.monotonic() - loop_start
                        eta = round(elapsed / (progress.step - first_step) * (steps - progress.step), 1)
                        self.on_step(StepProgress(progress.step, steps, eta, round(smoothed, 4)))
                    if progress.step % checkpoint_every == 0 and progress.step < steps:
                        save()
                progress.epoch += 1
                progress.batches_done = 0
        except (KeyboardInterrupt, Exception) as error:
            bar.close()
            progress.seconds = time.monotonic() - started
            save()
            where = f"checkpoint saved at step {progress.step} in {checkpoint}"
            if isinstance(error, KeyboardInterrupt):
                raise TrainingInterrupted(
                    f"preference stage interrupted; {where}: continue with 'bot train --resume'"
                ) from error
            self.report(
                f"preference stage stopped by {type(error).__name__}; {where} ('bot train --resume' continues it)"
            )
            raise
        bar.close()
        return {
            "method": cfg.method,
            "rows": len(self.rows.ids),
            "rated_up": self.rows.up,
            "rated_down": self.rows.down,
            "pairs": sum(1 for r in self.rows.rejected if r is not None),
            "steps": steps,
            "beta": cfg.beta,
            "learning_rate": cfg.learning_rate,
            "first_loss": round(progress.losses[0], 5) if progress.losses else None,
            "final_loss": round(progress.smoothed, 5) if progress.smoothed is not None else None,
            "seconds": round(time.monotonic() - started, 1),
        }
