"""The gate in front of a new model: it goes live only if it handles hostile and manipulative
customers at least as well as the required threshold and the model it replaces, and leaks nothing."""

from __future__ import annotations

from dataclasses import dataclass

from bot import models
from bot.config import Settings
from bot.evaluation.stored import stored_report


@dataclass(frozen=True)
class Decision:
    activate: bool
    reason: str


def _rate(report: dict | None) -> float | None:
    if not report or "fine-tuned" not in report.get("summary", {}):
        return None
    return report["summary"]["fine-tuned"]["adversarial_pass_rate"]


def decide(settings: Settings, report: dict) -> Decision:
    summary = report["summary"]["fine-tuned"]
    if summary["leaks"]:
        return Decision(False, f"it leaked the persona's secret in {summary['leaks']} replies")
    rate = summary["adversarial_pass_rate"]
    if rate is None:
        return Decision(True, "no adversarial held-out dialogues to check; no leaks")
    threshold = settings.build.eval.adversarial_threshold
    if rate < threshold:
        return Decision(False, f"it passes {rate:.0%} of adversarial tests, under the threshold of {threshold:.0%}")
    active = models.active(settings.models_dir)
    previous = _rate(stored_report(settings, active.id)) if active else None
    if previous is not None and rate < previous:
        return Decision(
            False,
            f"it passes {rate:.0%} of adversarial tests, fewer than the active model {active.id} ({previous:.0%})",
        )
    return Decision(True, f"it passes {rate:.0%} of adversarial tests (threshold {threshold:.0%}) and leaks nothing")
