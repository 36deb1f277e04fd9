"""What `bot train` does around the recipe: compile, skip when up to date, train, evaluate the
new model, and activate it only if it passes the gate (or `--force`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot import models
from bot.config import Settings
from bot.data.project import compile_data
from bot.errors import InvalidFiles
from bot.training.recipe import (
    StepProgress,
    TrainResult,
    preference_tune,
    resume_preference_tune,
    train,
    unfinished_preference_stage,
)


@dataclass(frozen=True)
class Outcome:
    model: models.TrainedModel
    trained: bool  # False: an existing model already matched the data
    activated: bool = True
    reason: str = ""
    report_dir: object = None
    main_process: bool = True  # under `accelerate launch`, only the main process reports
    passed_gate: bool | None = None  # None: no gate ran (nothing was trained)


def train_and_activate(
    settings: Settings,
    *,
    resume: bool = False,
    if_needed: bool = False,
    force: bool = False,
    progress_bar: bool = True,
    report: Callable[[str], None] = lambda message: None,
    on_step: Callable[[StepProgress], None] | None = None,
) -> Outcome:
    from accelerate import PartialState

    compiled, _ = compile_data(settings)
    base = settings.build.model.base
    if if_needed and (found := models.matching(settings.models_dir, compiled.data_hash, base)):
        active = models.active_id(settings.models_dir)
        chosen = next((m for m in found if m.id == active), found[-1])
        if chosen.id != active and chosen.manifest.get("activation", {}).get("activated", True):
            models.activate(settings.models_dir, chosen.id)
        return Outcome(chosen, trained=False, activated=chosen.id == models.active_id(settings.models_dir))
    if resume and (stage := unfinished_preference_stage(settings.models_dir)):
        preferred = resume_preference_tune(settings, stage, progress_bar=progress_bar, report=report, on_step=on_step)
        started = models.get(settings.models_dir, preferred.manifest["started_from"])
        activation = started.manifest.get("activation", {})
        against = Outcome(
            started, True, started.id == models.active_id(settings.models_dir), activation.get("reason", "")
        )
        return _gate(settings, preferred, force=False, progress_bar=progress_bar, report=report, against=against)
    result = train(
        settings, compiled.data_hash, resume=resume, progress_bar=progress_bar, report=report, on_step=on_step
    )
    if not PartialState().is_main_process:
        return Outcome(models.get(settings.models_dir, result.model_id), trained=True, main_process=False)

    outcome = _gate(settings, result, force=force, progress_bar=progress_bar, report=report)
    preferred = preference_tune(settings, result, progress_bar=progress_bar, report=report, on_step=on_step)
    if preferred is None:
        return outcome
    return _gate(settings, preferred, force=False, progress_bar=progress_bar, report=report, against=outcome)


def _gate(
    settings: Settings,
    result: TrainResult,
    *,
    force: bool,
    progress_bar: bool,
    report: Callable[[str], None],
    against: Outcome | None = None,
) -> Outcome:
    """Evaluate a new model and activate it if it passes the gate (or `force`). `against`: the
    fine-tuned model a preference-tuned one started from, which it must not lose to on any
    measure; if it does, that model stays."""
    from bot.evaluation.gate import decide, no_worse
    from bot.evaluation.run import evaluate
    from bot.evaluation.stored import stored_report

    report(f"evaluating model {result.model_id} on the held-out dialogues (fine-tuned mode)")
    try:
        evaluation, folder = evaluate(
            settings, model_id=result.model_id, modes=("fine-tuned",), progress_bar=progress_bar
        )
    except InvalidFiles as e:  # the data changed while it trained: the model is kept, not judged
        then = (
            f"model {result.model_id} is trained and saved, but its gate could not read the data above, which "
            f"changed while it trained: fix it, then 'bot eval --model {result.model_id}' and, if it does well, "
            f"'bot models activate {result.model_id}'"
        )
        raise InvalidFiles(e.problems, then) from None
    decision = decide(settings, evaluation)
    if against is not None and decision.activate:
        decision = no_worse(evaluation, stored_report(settings, against.model.id), against.model.id)
    activate = decision.activate or force
    forced = force and not decision.activate
    activation = {"activated": activate, "forced": forced, "reason": decision.reason}
    manifest = dict(result.manifest, activation=activation)
    models.write_json(result.folder / models.MANIFEST, manifest)
    if activate:
        models.activate(settings.models_dir, result.model_id)
    elif against is not None:
        report(f"model {result.model_id} is not activated: {decision.reason}")
        return against
    return Outcome(
        models.get(settings.models_dir, result.model_id),
        True,
        activate,
        decision.reason,
        folder,
        passed_gate=decision.activate,
    )
