"""`bot train`'s recipe, in torchtune's shape: a class with setup, train, save_checkpoint, save, cleanup.

Runs on CUDA with bf16 when there is a GPU, on the CPU otherwise (bf16 where the CPU supports
it, else fp32). Several processes or machines work through `accelerate launch` unchanged.
A checkpoint is written every `checkpoint_every` optimizer steps and when training stops on
Ctrl-C or an error; `bot train --resume` continues from it. Ctrl-C reads "interrupted"; an
error surfaces as it is, with its traceback, after the checkpoint is saved. The loss is bot/training/loss.py's.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bot import atomic, models
from bot.base_model import load_model, load_tokenizer
from bot.config import LoraSettings, Settings
from bot.data.profile import PROFILE_FILE
from bot.errors import BotError
from bot.precision import choose_precision
from bot.rendering import Example, render_within
from bot.training.batching import batch_sampler, collate
from bot.training.loss import bot_token_loss, trained_tokens

CHECKPOINT = "checkpoint"


class TrainingInterrupted(BotError):
    """Training stopped early; a checkpoint was saved for `bot train --resume`."""


class NothingToResume(BotError):
    """`--resume` found no interrupted run."""


@dataclass
class Progress:
    """What a checkpoint records beside the weights, optimizer and RNG states."""

    epoch: int = 0
    batches_done: int = 0  # in the current epoch, on this process
    step: int = 0  # optimizer steps
    tokens: int = 0  # non-padding tokens seen, all processes
    seconds: float = 0.0
    data_hash: str = ""
    held_out_losses: list[float] = field(default_factory=list)  # one per finished epoch


@dataclass(frozen=True)
class StepProgress:
    """Where training is: optimizer steps done of all, the estimated seconds left (None before
    the first step) and the smoothed training loss."""

    step: int
    steps: int
    eta_s: float | None
    loss: float | None


def load_examples(jsonl: Path, tokenizer, max_length: int) -> list[Example]:
    examples = []
    for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
        examples += render_within(tokenizer, json.loads(line)["messages"], max_length, name=f"{jsonl.name} line {n}")
    return examples


def linear_layer_names(model) -> list[str]:
    """Names of the linear layers inside the transformer blocks (what peft's 'all-linear' means;
    spelled out because peft accepts a layer range only with a list)."""
    output = model.get_output_embeddings()
    linear = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module is not output
    ]
    return sorted({name.rsplit(".", 1)[-1] for name in linear})


def add_lora(model, lora: LoraSettings):
    """Wrap `model` in a peft LoRA adapter as configured (only the adapter is trainable)."""
    from peft import LoraConfig, get_peft_model

    targets = linear_layer_names(model) if lora.target_modules == ["all-linear"] else lora.target_modules
    layers = model.config.num_hidden_layers
    top = min(lora.top_layers or layers, layers)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=list(range(layers - top, layers)) if top < layers else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_training_state(folder: Path, accelerator, model, optimizer, scheduler) -> None:
    """Adapter weights, optimizer, schedule and every process's random state: all a resumed run
    needs, and a few MB instead of the whole base model."""
    from peft import get_peft_model_state_dict

    accelerator.wait_for_everyone()
    folder.mkdir(parents=True, exist_ok=True)
    rank = accelerator.process_index
    torch.save(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        folder / f"rng-{rank}.pt",
    )
    if accelerator.is_main_process:  # after all-reduce every process holds the same weights and optimizer
        state = {
            "adapter": get_peft_model_state_dict(accelerator.unwrap_model(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        atomic.write_file(folder / "state.pt", lambda tmp: torch.save(state, tmp))
    accelerator.wait_for_everyone()


def load_checkpoint(folder: Path, accelerator, model, optimizer, scheduler) -> None:
    from peft import set_peft_model_state_dict

    state = torch.load(folder / "state.pt", map_location=accelerator.device, weights_only=False)
    set_peft_model_state_dict(accelerator.unwrap_model(model), state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = torch.load(folder / f"rng-{accelerator.process_index}.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])


PREFERENCE_STAGE = "preference-stage.json"  # in a checkpoint of the preference stage: what it started from


def _unfinished_run(models_dir: Path, *, preference: bool = False) -> Path | None:
    """The latest run folder with a checkpoint and no model yet: of supervised training, or with
    `preference` of the preference stage."""
    runs = [
        p.parent
        for p in sorted(models_dir.glob("*/" + CHECKPOINT))
        if not (p.parent / models.MANIFEST).exists() and (p / PREFERENCE_STAGE).exists() == preference
    ]
    return runs[-1] if runs else None


def unfinished_preference_stage(models_dir: Path) -> Path | None:
    """The run folder of an interrupted preference stage, if any (`bot train --resume` goes on
    with it)."""
    return _unfinished_run(models_dir, preference=True)


def make_accelerator(cfg):
    """accelerate's Accelerator as config.yml's `train` asks, and the precision chosen."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    precision = choose_precision(cfg.precision, cuda)
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.gradient_accumulation,
    )
    return accelerator, precision


@torch.no_grad()
def held_out_loss(model, loader, accelerator) -> float:
    """Mean loss per trained token over the held-out dialogues."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            total += bot_token_loss(model, batch, reduction="sum").item()
        count += trained_tokens(batch)
    model.train()
    return total / max(count, 1)


def write_model(run_dir: Path, model, tokenizer, profile_from: Path, manifest: dict) -> None:
    """A model's folder: its adapter, tokenizer, the profile in `profile_from` and its manifest."""
    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "tokenizer")
    shutil.copyfile(profile_from / PROFILE_FILE, run_dir / PROFILE_FILE)
    models.write_json(run_dir / models.MANIFEST, manifest)


@dataclass
class TrainResult:
    model_id: str
    folder: Path
    manifest: dict
    model: object  # the trained PeftModel, still in memory
    accelerator: object = None
    tokenizer: object = None


class LoRARecipe:
    """The training recipe in torchtune's shape: `setup` (where the run lives, model, data,
    optimizer), `train` (the loop, with checkpoints), `save_checkpoint`, `save` (the model folder)
    and `cleanup`. `run` does them in order, as `bot train` and `bot tune` use it.

    Ctrl-C saves a checkpoint and ends in TrainingInterrupted ("continue with --resume"). Any
    other error also saves a checkpoint first, then surfaces as it is, traceback and all: a bug
    is not an interruption."""

    def __init__(
        self,
        settings: Settings,
        data_hash: str,
        *,
        resume: bool = False,
        progress_bar: bool = True,
        report: Callable[[str], None] = lambda message: None,
        on_step: Callable[[StepProgress], None] | None = None,
    ):
        self.settings, self.data_hash, self.resume = settings, data_hash, resume
        self.progress_bar, self.report, self.on_step = progress_bar, report, on_step
        self.cfg = settings.build.train
        self.state = Progress(data_hash=data_hash)
        self.smoothed_loss: float | None = None
        self.bar = None

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate.utils import set_seed

        self.cuda = cuda = torch.cuda.is_available()
        self.accelerator, self.precision = make_accelerator(self.cfg)
        set_seed(self.cfg.seed, deterministic=not cuda)
        self._setup_run_dir()
        self._setup_model_and_data()
        if self.resume:
            load_checkpoint(self.checkpoint, self.accelerator, self.model, self.optimizer, self.scheduler)
            self.report(
                f"resuming {self.run_dir.name} at epoch {self.state.epoch + 1}, "
                f"step {self.state.step} of {self.total_steps}"
            )

    def _setup_run_dir(self) -> None:
        """A new models/<id>/, or with `resume` the unfinished one and its progress."""
        from accelerate.utils import broadcast_object_list

        models_dir = self.settings.models_dir
        run_dir = None
        if self.accelerator.is_main_process:
            models_dir.mkdir(parents=True, exist_ok=True)
            run_dir = _unfinished_run(models_dir) if self.resume else models_dir / models.new_id(models_dir)
        run_dir = broadcast_object_list([run_dir])[0]
        if run_dir is None:
            raise NothingToResume(f"no interrupted training run in {models_dir} to resume: run 'bot train'")
        self.run_dir, self.checkpoint = run_dir, run_dir / CHECKPOINT
        if self.resume:
            self.state = Progress(**json.loads((self.checkpoint / "progress.json").read_text()))
            if self.state.data_hash != self.data_hash:
                raise BotError(
                    f"the training data changed since run {run_dir.name} started: train anew (without --resume)"
                )

    def _setup_model_and_data(self) -> None:
        from transformers import get_scheduler

        settings, cfg, cuda = self.settings, self.cfg, self.cuda
        self.tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
        model = load_model(settings.base_model, settings.cache_dir)
        model.config.use_cache = False
        model = add_lora(model, cfg.lora)

        max_length = settings.build.model.max_length
        train_examples = load_examples(settings.build_dir / "train.jsonl", self.tokenizer, max_length)
        test_examples = load_examples(settings.build_dir / "test.jsonl", self.tokenizer, max_length)
        # tokens_per_batch applies on CUDA only
        self.sampler = batch_sampler([len(e) for e in train_examples], cfg, cuda=cuda)
        pad = self.tokenizer.pad_token_id
        loader = torch.utils.data.DataLoader(
            train_examples, batch_sampler=self.sampler, collate_fn=lambda b: collate(b, pad)
        )
        self.eval_loader = torch.utils.data.DataLoader(
            test_examples,
            batch_sampler=batch_sampler([len(e) for e in test_examples], cfg, cuda=cuda, shuffle=False),
            collate_fn=lambda b: collate(b, pad),
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
        self.batches_per_epoch = math.ceil(len(self.sampler) / self.accelerator.num_processes)
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.gradient_accumulation)
        self.total_steps = steps_per_epoch * cfg.epochs
        scheduler = get_scheduler(
            cfg.schedule,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        prepared = self.accelerator.prepare(model, optimizer, loader, scheduler)
        self.model, self.optimizer, self.loader, self.scheduler = prepared

    # -- train ---------------------------------------------------------------------------------
    def train(self) -> None:
        """The loop over epochs; a checkpoint every `checkpoint_every` steps and when it stops early."""
        from tqdm.auto import tqdm

        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        self.bar = tqdm(
            total=self.batches_per_epoch * cfg.epochs,
            initial=state.epoch * self.batches_per_epoch + state.batches_done,
            disable=not (self.progress_bar and accelerator.is_main_process),
            unit="batch",
            desc="training",
            dynamic_ncols=True,
        )
        self.started = time.monotonic() - state.seconds
        # this run's pace gives the ETA (a resumed run's earlier pace may differ)
        self.first_step, self.run_start = state.step, time.monotonic()
        self.window_tokens, self.window_start = 0, time.monotonic()  # this run's throughput, shown on the bar
        self._tell(state.step)
        self.model.train()
        try:
            while state.epoch < cfg.epochs:
                self._train_epoch()
        except (KeyboardInterrupt, Exception) as error:
            self.bar.close()
            state.seconds = time.monotonic() - self.started
            self.save_checkpoint()
            where = f"checkpoint saved at step {state.step} in {self.checkpoint}"
            if isinstance(error, KeyboardInterrupt):
                raise TrainingInterrupted(
                    f"training interrupted; {where}: continue with 'bot train --resume'"
                ) from error
            self.report(f"training stopped by {type(error).__name__}; {where} ('bot train --resume' continues it)")
            raise
        self.bar.close()
        state.seconds = time.monotonic() - self.started

    def _train_epoch(self) -> None:
        cfg, state, accelerator, model = self.cfg, self.state, self.accelerator, self.model
        self.sampler.set_epoch(state.epoch)
        loader = self.loader
        batches = accelerator.skip_first_batches(loader, state.batches_done) if state.batches_done else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = bot_token_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            tokens = int(batch["attention_mask"].sum()) * accelerator.num_processes
            state.tokens += tokens
            state.batches_done += 1
            self.window_tokens += tokens
            value = loss.item()
            self.smoothed_loss = value if self.smoothed_loss is None else 0.9 * self.smoothed_loss + 0.1 * value
            rate = self.window_tokens / max(time.monotonic() - self.window_start, 1e-6)
            self.bar.set_postfix(loss=f"{self.smoothed_loss:.3f}", tok_s=f"{rate:,.0f}", epoch=state.epoch + 1)
            self.bar.update(1)
            if accelerator.sync_gradients:
                state.step += 1
                state.seconds = time.monotonic() - self.started
                self._tell(state.step)
                if state.step % cfg.checkpoint_every == 0 and state.step < self.total_steps:
                    self.save_checkpoint()
        state.epoch += 1
        state.batches_done = 0
        state.held_out_losses.append(held_out_loss(model, self.eval_loader, accelerator))
        self.bar.write(
            f"epoch {state.epoch}/{cfg.epochs}: train loss {self.smoothed_loss:.3f}, "
            f"held-out loss {state.held_out_losses[-1]:.3f}"
        )

    def _tell(self, step: int) -> None:
        if self.on_step is None or not self.accelerator.is_main_process:
            return
        done, elapsed = step - self.first_step, time.monotonic() - self.run_start
        eta = round(elapsed / done * (self.total_steps - step), 1) if done else None
        loss = None if self.smoothed_loss is None else round(self.smoothed_loss, 4)
        self.on_step(StepProgress(step, self.total_steps, eta, loss))

    # -- checkpoints and the model folder ------------------------------------------------------
    def save_checkpoint(self) -> None:
        save_training_state(self.checkpoint, self.accelerator, self.model, self.optimizer, self.scheduler)
        if self.accelerator.is_main_process:
            models.write_json(self.checkpoint / "progress.json", asdict(self.state))

    def save(self) -> TrainResult:
        """models/<id>/: the adapter, tokenizer, profile and manifest; the checkpoint goes."""
        accelerator, state, cfg, settings = self.accelerator, self.state, self.cfg, self.settings
        accelerator.wait_for_everyone()
        run_dir = self.run_dir
        manifest = {
            "id": run_dir.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": settings.build.model.base,
            "data_hash": self.data_hash,
            "config": settings.build.model_dump(mode="json"),
            "training": {
                "steps": state.step,
                "epochs": cfg.epochs,
                "tokens": state.tokens,
                "seconds": round(state.seconds, 1),
                "tokens_per_second": round(state.tokens / max(state.seconds, 1e-6), 1),
                "final_train_loss": round(self.smoothed_loss, 4) if self.smoothed_loss is not None else None,
                "held_out_loss": [round(x, 4) for x in state.held_out_losses],
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
                "precision": self.precision,
            },
        }
        if accelerator.is_main_process:
            # the prompt it was trained with
            write_model(run_dir, accelerator.unwrap_model(self.model), self.tokenizer, settings.build_dir, manifest)
            shutil.rmtree(self.checkpoint, ignore_errors=True)
        accelerator.wait_for_everyone()
        model = accelerator.unwrap_model(self.model)
        return TrainResult(run_dir.name, run_dir, manifest, model, accelerator, self.tokenizer)

    def cleanup(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def run(self) -> TrainResult:
        try:
            self.setup()
            self.train()
            return self.save()
        finally:
            self.cleanup()


def train(settings: Settings, data_hash: str, **options) -> TrainResult:
    """Fine-tune a LoRA adapter on build/train.jsonl; writes models/<id>/ and returns it.
    `options` are LoRARecipe's: resume, progress_bar, report, on_step (main process only: it
    hears of the start and of every optimizer step)."""
    return LoRARecipe(settings, data_hash, **options).run()


def preference_tune(
    settings: Settings,
    tuned: TrainResult,
    *,
    progress_bar: bool = True,
    report: Callable[[str], None] = lambda message: None,
    on_step: Callable[[StepProgress], None] | None = None,
) -> TrainResult | None:
    """The preference stage (train.preference in config.yml) on a fine-tuned model still in
    memory, saved as a model of its own that records the one it `started_from`; None when the
    stage is off or the reviewed preference data has no row for its method. Its checkpoints
    are in the new model's folder until it is saved; `resume_preference_tune` goes on from one."""
    cfg = settings.build.train.preference
    if not cfg.enabled:
        return None
    if tuned.accelerator.num_processes > 1:
        raise BotError("the preference stage runs in one process: train without 'accelerate launch' to use it")
    stage = _preference_stage(settings, tuned.model, tuned.accelerator, tuned.tokenizer, progress_bar, on_step, report)
    if stage is None:
        return None
    report(f"preference stage: {cfg.method.upper()} on {len(stage.rows.ids)} rows, from model {tuned.model_id}")
    run_dir = settings.models_dir / models.new_id(settings.models_dir)
    checkpoint = run_dir / CHECKPOINT
    checkpoint.mkdir(parents=True)
    models.write_json(checkpoint / PREFERENCE_STAGE, {"started_from": tuned.model_id})
    stats = stage.run(checkpoint, checkpoint_every=settings.build.train.checkpoint_every)
    return save_preference_model(run_dir, tuned.model_id, tuned.manifest, tuned.folder, stage, stats)


def resume_preference_tune(
    settings: Settings,
    run_dir: Path,
    *,
    progress_bar: bool = True,
    report: Callable[[str], None] = lambda message: None,
    on_step: Callable[[StepProgress], None] | None = None,
) -> TrainResult:
    """The interrupted preference stage in `run_dir`, from its checkpoint, on the fine-tuned
    model it started from (its adapter: the checkpoint's)."""
    checkpoint = run_dir / CHECKPOINT
    started = models.get(settings.models_dir, json.loads((checkpoint / PREFERENCE_STAGE).read_text())["started_from"])
    cfg = settings.build.train
    model, accelerator, tokenizer = trainable_model(settings)  # its weights: the checkpoint's
    stage = _preference_stage(settings, model, accelerator, tokenizer, progress_bar, on_step, report)
    if stage is None:
        raise BotError(
            f"the preference stage in {run_dir.name} can't go on: train.preference is off or its data is gone; "
            "train anew (without --resume)"
        )
    stats = stage.run(checkpoint, resume=True, checkpoint_every=cfg.checkpoint_every)
    return save_preference_model(run_dir, started.id, started.manifest, started.folder, stage, stats)


def trainable_model(settings: Settings, adapter_dir: Path | None = None):
    """(model, accelerator, tokenizer) to train on from a saved state: the base model with a new
    LoRA adapter as config.yml's `train.lora` asks, or the one saved in `adapter_dir`, trainable;
    seeded as training is."""
    from accelerate.utils import set_seed
    from peft import PeftModel

    cfg = settings.build.train
    accelerator, _ = make_accelerator(cfg)
    set_seed(cfg.seed, deterministic=not torch.cuda.is_available())
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    model = load_model(settings.base_model, settings.cache_dir)
    model.config.use_cache = False
    if adapter_dir is None:
        model = add_lora(model, cfg.lora)
    else:
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return accelerator.prepare(model), accelerator, tokenizer


def _preference_stage(settings: Settings, model, accelerator, tokenizer, progress_bar, on_step, report):
    from bot.data.compiler import PREFERENCES_FILE
    from bot.training.preference import PreferenceStage, load_preference_rows

    cfg = settings.build.train.preference
    if not cfg.enabled:
        return None
    path = settings.build_dir / PREFERENCES_FILE
    rows = load_preference_rows(path, tokenizer, settings.build.model.max_length, cfg.method)
    if not rows.ids:
        kind = "rated replies" if cfg.method == "kto" else "agents' replies against the bot's"
        report(f"preference stage skipped: no reviewed {kind} in training_data/preferences/")
        return None
    return PreferenceStage(
        model,
        accelerator,
        tokenizer,
        rows,
        cfg,
        seed=settings.build.train.seed,
        progress_bar=progress_bar,
        on_step=on_step,
        report=report,
    )


def save_preference_model(
    run_dir: Path, started_from: str, manifest: dict, profile_from: Path, stage, stats, **fields
):
    """The preference-tuned model's folder (the profile of the model it started from, whose
    `manifest` it extends with `fields`); the checkpoint goes."""
    manifest = dict(manifest, id=run_dir.name, started_from=started_from, preference=stats)
    manifest.pop("activation", None)
    manifest.update(fields)
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model = stage.accelerator.unwrap_model(stage.model)
    write_model(run_dir, model, stage.tokenizer, profile_from, manifest)
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)
    return TrainResult(run_dir.name, run_dir, manifest, model, stage.accelerator, stage.tokenizer)
