"""A new project's first minutes. While no trained model matches the training data, `bot serve
--train-if-needed` (what `make run` runs) answers at once with the base model prompted few-shot
(example dialogues in its system prompt, as `bot eval`'s few-shot mode), trains in the
background, and swaps the fine-tuned model in once it has passed the gate."""

from __future__ import annotations

from bot import models
from bot.config import Settings
from bot.data.project import compile_data, validate
from bot.engine.response_model import ResponseModel

FINE_TUNING = "base (fine-tuning in progress)"


def stage_after(job_state: str) -> str:
    """What the base model says it is once its training job has ended without a model to serve
    (bot.pipelines.training_job's states: succeeded here means the gate refused the model)."""
    if job_state == "succeeded":
        return "base (the fine-tuned model did not pass the gate: see the console's Train panel)"
    return f"base (fine-tuning {job_state}: see the console's Train panel)"


def needs_training(settings: Settings) -> bool:
    """No trained model matches the training data as it is now (what `bot train --if-needed`
    would train for). Compiles the data, so a data file with a mistake raises its error here."""
    compiled, _ = compile_data(settings)
    return not models.matching(settings.models_dir, compiled.data_hash, settings.build.model.base)


def few_shot_base_model(settings: Settings) -> ResponseModel:
    """The base model of config.yml with the few-shot system prompt, described as
    `FINE_TUNING` until the server says otherwise."""
    from bot.engine.weights import load_weights
    from bot.evaluation.conversation_suite import mode_model

    model = mode_model(settings, "few-shot", validate(settings), load_weights(settings, None))
    model.stage = FINE_TUNING
    return model
