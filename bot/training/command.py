"""What `bot train` does around the recipe: compile, skip when up to date, activate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot import models
from bot.config import Settings
from bot.data.project import compile_data
from bot.training.recipe import train


@dataclass(frozen=True)
class Outcome:
    model: models.TrainedModel
    trained: bool  # False: an existing model already matched the data
    main_process: bool = True  # under `accelerate launch`, only the main process reports


def train_and_activate(
    settings: Settings,
    *,
    resume: bool = False,
    if_needed: bool = False,
    progress_bar: bool = True,
    report: Callable[[str], None] = lambda message: None,
) -> Outcome:
    compiled, _ = compile_data(settings)
    base = settings.build.model.base
    if if_needed and (found := models.matching(settings.models_dir, compiled.data_hash, base)):
        active = models.active_id(settings.models_dir)
        chosen = next((m for m in found if m.id == active), found[-1])
        if chosen.id != active:
            models.activate(settings.models_dir, chosen.id)
        return Outcome(chosen, trained=False)
    from accelerate import PartialState

    result = train(settings, compiled.data_hash, resume=resume, progress_bar=progress_bar, report=report)
    model = models.get(settings.models_dir, result.model_id)
    main_process = PartialState().is_main_process
    if main_process:
        models.activate(settings.models_dir, model.id)
    return Outcome(model, trained=True, main_process=main_process)
