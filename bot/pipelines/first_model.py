"""A new project's first minutes. While no trained model matches the training data, `bot serve
--train-if-needed` (what `make run` runs) answers at once with the base model prompted few-shot
(example dialogues in its system prompt, as `bot eval`'s few-shot mode), trains in the
background, and swaps the fine-tuned model in once it has passed the gate."""

from __future__ import annotations

from bot import models
from bot.config import Settings
from bot.data.compiler import data_hash
from bot.data.schema import TrainingData
from bot.engine.response_model import ResponseModel
from bot.pipelines.training_job import SUCCEEDED

FINE_TUNING = "base (fine-tuning in progress)"


def stage_after(job_state: str) -> str:
    """What the base model says it is once its training job has ended without a model to serve
    (bot.pipelines.training_job's states: succeeded here means the gate refused the model)."""
    if job_state == SUCCEEDED:
        return "base (the fine-tuned model did not pass the gate: see the console's Train panel)"
    return f"base (fine-tuning {job_state}: see the console's Train panel)"


def needs_training(settings: Settings, data: TrainingData) -> bool:
    """No trained model matches `data` (bot.data.project.validate's) and the base model: what
    `bot train --if-needed` would train for."""
    return not models.matching(settings.models_dir, data_hash(data), settings.build.model.base)


def few_shot_base_model(settings: Settings, data: TrainingData) -> ResponseModel:
    """The base model of config.yml with the few-shot system prompt, described as
    `FINE_TUNING` until the server says otherwise."""
    from bot.engine.weights import load_weights
    from bot.evaluation.conversation_suite import mode_model

    model = mode_model(settings, "few-shot", data, load_weights(settings, None))
    model.stage = FINE_TUNING
    return model
