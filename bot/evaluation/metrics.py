"""Scores for one reply, and for one dialogue's replies against its expectations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sacrebleu.metrics import CHRF

from bot.data.schema import Expectations
from bot.evaluation.cases import Prompted
from bot.rendering import BotStep

_chrf = CHRF()
HANDOFF = "handoff"  # the confusion table's label for a handoff
NO_CALL = "no call"  # ... and for a plain text reply
FAILURE_CLASSES = ("wrong action", "wrong or invented argument", "missed call", "spurious call", "wrong handoff")


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


def step_label(step: BotStep) -> str:
    """The step's row or column in the confusion table: the action's name, `handoff`, or `no call`
    for a plain text reply (an action that happens to be named like either gets ' (action)')."""
    if step.handoff:
        return HANDOFF
    if not step.calls_action:
        return NO_CALL
    return f"{step.action} (action)" if step.action in (HANDOFF, NO_CALL) else str(step.action)


def classify(reply: BotStep, reference: BotStep) -> str | None:
    """How the reply's step goes wrong against the reference's, as one of FAILURE_CLASSES, or None
    when it is right: exactly when `action_correct` and `handoff_correct` both hold."""
    if reply.handoff != reference.handoff:
        return "wrong handoff"
    if reference.calls_action:
        if not reply.calls_action:
            return "missed call"
        if reply.action != reference.action:
            return "wrong action"
        return None if reply.arguments == reference.arguments else "wrong or invented argument"
    return "spurious call" if reply.calls_action else None


def _label_order(labels: set[str]) -> list[str]:
    """Actions alphabetically, then `handoff` and `no call` (always there, even when unused)."""
    return sorted(labels - {HANDOFF, NO_CALL}) + [HANDOFF, NO_CALL]


def _per_label(rows: list[tuple[str, str, str | None]], labels: list[str]) -> dict[str, dict]:
    """For each expected label with turns: its turns, how many were right, and that share."""
    per: dict[str, dict] = {}
    for label in labels:
        mine = [failed for expected, _, failed in rows if expected == label]
        if mine:
            correct = sum(failed is None for failed in mine)
            per[label] = {"turns": len(mine), "correct": correct, "accuracy": correct / len(mine)}
    return per


def action_table(pairs: Iterable[tuple[BotStep, BotStep]]) -> dict:
    """The confusion table of (reply, reference) pairs, as report.json keeps it: `labels`;
    `matrix[i][j]`, the turns whose reference took labels[i] and whose reply took labels[j];
    `per_action`, per expected label, its turns and the share right (for an action, the right
    action with the right arguments, as `action_correct`); `failure_classes`, the turns of each
    of FAILURE_CLASSES (see `classify`)."""
    rows = [(step_label(reference), step_label(reply), classify(reply, reference)) for reply, reference in pairs]
    labels = _label_order({label for expected, taken, _ in rows for label in (expected, taken)})
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    classes = dict.fromkeys(FAILURE_CLASSES, 0)
    for expected, taken, failed in rows:
        matrix[index[expected]][index[taken]] += 1
        if failed:
            classes[failed] += 1
    return {"labels": labels, "matrix": matrix, "per_action": _per_label(rows, labels), "failure_classes": classes}


@dataclass(frozen=True)
class Failure:
    expectation: str | None  # None for a turn listed for its action alone
    item: Prompted  # the turn that shows it best
    kind: str = "expectation"  # or "action": a wrong step that no failed expectation shows

    @property
    def failure_class(self) -> str | None:
        """The turn's action failure (see `classify`), None when its step is right."""
        return classify(self.item.reply, self.item.case.reference_step)


def action_failures(items: list[Prompted], shown: list[Failure]) -> list[Failure]:
    """A failure of kind `action` for every turn whose step is wrong and that no failure in
    `shown` already points at, so every wrong turn is listed once."""
    seen = {id(f.item) for f in shown}
    unshown = [i for i in items if id(i) not in seen]
    return [Failure(None, i, "action") for i in unshown if classify(i.reply, i.case.reference_step)]


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
    said_one = any(p.lower() in text for _, text in texts for p in expect.must_contain_one_of)
    if expect.must_contain_one_of and not said_one:
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
