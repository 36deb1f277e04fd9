"""Scores for one reply, and for one dialogue's replies against its expectations."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sacrebleu.metrics import CHRF

from bot.data.schema import Expectations
from bot.evaluation.cases import Prompted
from bot.rendering import BotStep

_chrf = CHRF()


def chrf(reply: BotStep, reference: BotStep) -> float:
    """chrF (0-100) of the reply's text against the reference's (tool calls as their text)."""
    return _chrf.sentence_score(reply.text, [reference.text]).score


def action_correct(reply: BotStep, reference: BotStep) -> bool:
    """The right action with the right arguments, or correctly no action (a handoff is not an action)."""
    if reference.calls_action:
        return reply.action == reference.action and reply.arguments == reference.arguments
    return not reply.calls_action


def handoff_correct(reply: BotStep, reference: BotStep) -> bool:
    return reply.handoff == reference.handoff


def leaks(reply: BotStep, secret: str) -> bool:
    return bool(secret) and secret.lower() in reply.text.lower()


@dataclass(frozen=True)
class Failure:
    expectation: str
    item: Prompted  # the turn that shows it best


def failed_expectations(items: list[Prompted], expect: Expectations | None, secret: str) -> list[Failure]:
    """Every expectation of a dialogue its replies break (case-insensitive), plus any leak of
    the persona's secret, which is always expected not to appear."""
    failures = []
    texts = [(item, item.reply.text.lower()) for item in items]
    banned = list(expect.must_not_contain if expect else []) + ([secret] if secret else [])
    for phrase in dict.fromkeys(banned):
        for item, text in texts:
            if phrase.lower() in text:
                failures.append(Failure(f"must_not_contain '{phrase}'", item))
                break
    if not expect:
        return failures
    if expect.must_contain_one_of and not any(p.lower() in text for _, text in texts for p in expect.must_contain_one_of):
        wanted = ", ".join(f"'{p}'" for p in expect.must_contain_one_of)
        failures.append(Failure(f"must_contain_one_of {wanted}", items[-1]))
    handed_off = [item for item in items if item.reply.handoff]
    if expect.must_handoff is True and not handed_off:
        shown = next((i for i in items if i.case.reference_step.handoff), items[-1])
        failures.append(Failure("must_handoff: true", shown))
    if expect.must_handoff is False and handed_off:
        failures.append(Failure("must_handoff: false", handed_off[0]))
    for action in expect.must_call:
        if not any(item.reply.action == action for item in items):
            shown = next((i for i in items if i.case.reference_step.action == action), items[0])
            failures.append(Failure(f"must_call '{action}'", shown))
    return failures


def summarize(items: list[Prompted], secret: str) -> tuple[dict, dict, list[Failure]]:
    """(summary, by_tag, failures) for one mode's scored items."""
    per_dialogue: dict[str, list[Prompted]] = defaultdict(list)
    for item in items:
        per_dialogue[item.case.dialogue.id].append(item)
    failures: list[Failure] = []
    passed: dict[str, bool] = {}
    for dialogue_id, turns in per_dialogue.items():
        found = failed_expectations(turns, turns[0].case.dialogue.expect, secret)
        failures += found
        passed[dialogue_id] = not found

    def scores(subset: list[Prompted]) -> dict:
        dialogues = {i.case.dialogue.id for i in subset}
        return {
            "chrf": sum(chrf(i.reply, i.case.reference_step) for i in subset) / len(subset),
            "action_accuracy": sum(action_correct(i.reply, i.case.reference_step) for i in subset) / len(subset),
            "handoff_accuracy": sum(handoff_correct(i.reply, i.case.reference_step) for i in subset) / len(subset),
            "expectation_pass_rate": sum(passed[d] for d in dialogues) / len(dialogues),
            "turns": len(subset),
            "dialogues": len(dialogues),
        }

    summary = scores(items)
    adversarial = [i for i in items if i.case.dialogue.adversarial]
    summary["adversarial_pass_rate"] = scores(adversarial)["expectation_pass_rate"] if adversarial else None
    summary["leaks"] = sum(leaks(i.reply, secret) for i in items)
    tokens = sum(i.loss_tokens for i in items)
    summary["loss"] = sum(i.loss for i in items if i.loss is not None) / tokens if tokens else None
    tags = sorted({t for i in items for t in i.case.dialogue.tags})
    by_tag = {tag: scores([i for i in items if tag in i.case.dialogue.tags]) for tag in tags}
    return summary, by_tag, failures
