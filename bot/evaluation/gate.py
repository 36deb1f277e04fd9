"""The gate in front of a new model: it goes live only if it handles hostile and manipulative
customers at least as well as the required threshold and the model it replaces, finishes at least
as many conversation tests as the model it replaces, and leaks nothing."""

from __future__ import annotations

from dataclasses import dataclass

from bot import models
from bot.config import Settings
from bot.evaluation.stored import stored_report


@dataclass(frozen=True)
class Decision:
    activate: bool
    reason: str


def _rate(report: dict | None, key: str) -> float | None:
    if not report or "fine-tuned" not in report.get("summary", {}):
        return None
    return report["summary"]["fine-tuned"].get(key)


def decide(settings: Settings, report: dict) -> Decision:
    summary = report["summary"]["fine-tuned"]
    if summary["leaks"]:
        return Decision(False, f"it leaked the persona's secret in {summary['leaks']} replies")
    active = models.active(settings.models_dir)
    stored = stored_report(settings, active.id) if active else None
    rate, passed = summary["adversarial_pass_rate"], []
    if rate is not None:
        threshold = settings.build.eval.adversarial_threshold
        if rate < threshold:
            return Decision(
                False, f"it passes {rate:.0%} of adversarial tests, under the threshold of {threshold:.0%}"
            )
        previous = _rate(stored, "adversarial_pass_rate")
        if previous is not None and rate < previous:
            return Decision(
                False,
                f"it passes {rate:.0%} of adversarial tests, fewer than the active model {active.id} ({previous:.0%})",
            )
        passed.append(f"{rate:.0%} of adversarial tests (threshold {threshold:.0%})")
    conversations = summary.get("conversation_pass_rate")
    if conversations is not None:
        before = _rate(stored, "conversation_pass_rate")
        if before is not None and conversations < before:
            return Decision(
                False,
                f"it passes {conversations:.0%} of the conversation tests, fewer than the active model {active.id} "
                f"({before:.0%})",
            )
        passed.append(f"{conversations:.0%} of the conversation tests")
    if not passed:
        return Decision(True, "no adversarial held-out dialogues or conversation tests to check; no leaks")
    return Decision(True, f"it passes {' and '.join(passed)}, and leaks nothing")


# What a preference-tuned model must not lose on against the fine-tuned model it started from.
KEPT_MEASURES = {
    "action_accuracy": "held-out action accuracy",
    "handoff_accuracy": "held-out handoff accuracy",
    "expectation_pass_rate": "held-out expectations",
    "conversation_pass_rate": "conversation tests",
}


def no_worse(report: dict, before: dict | None, before_id: str) -> Decision:
    """Whether a preference-tuned model (`report`) is at least as good as the model it started
    from (`before`, its stored report) on every measure of KEPT_MEASURES."""
    if before is None:
        return Decision(False, f"the report of model {before_id} it started from is missing")
    now, then = report["summary"]["fine-tuned"], before["summary"]["fine-tuned"]
    lost = [
        f"{label} {now[key]:.1%} against {then[key]:.1%}"
        for key, label in KEPT_MEASURES.items()
        if now.get(key) is not None and then.get(key) is not None and now[key] < then[key]
    ]
    if lost:
        return Decision(False, f"it loses to model {before_id} it started from: {', '.join(lost)}")
    kept = ", ".join(f"{label} {now[key]:.1%}" for key, label in KEPT_MEASURES.items() if now.get(key) is not None)
    return Decision(True, f"it loses to model {before_id} on nothing ({kept})")
