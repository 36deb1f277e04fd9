"""`bot eval` and `bot test`: the four modes side by side on the held-out dialogues and on the
conversation tests, written as a report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bot import models
from bot.config import Settings
from bot.data.project import conversation_tests, validate
from bot.engine.weights import load_weights
from bot.errors import BotError
from bot.evaluation.cases import MODES, Prompted, cases, check_overlap
from bot.evaluation.conversation_results import (
    DEFAULT_TEMPERATURE,
    conversations_document,
    test_mode,
    write_conversations,
)
from bot.evaluation.generation import first_steps, reference_losses
from bot.evaluation.metrics import Failure, action_failures, action_table, step_label, summarize
from bot.evaluation.report_html import render_html
from bot.evaluation.stored import REPORT_FILE, report_folder, stored_report
from bot.rendering import message_step

BASELINE_ONLY = "base"  # results folder when no fine-tuned model is evaluated


class NoConversationTests(BotError):
    """`bot test` found no conversation test to run."""


class NoTrainedModel(BotError):
    """The fine-tuned mode was asked for, but there is no model to evaluate."""


def _failure_entry(mode: str, failure: Failure) -> dict:
    """One listed failure: a failed expectation (`kind` "expectation") or a wrong step no
    expectation shows ("action"); `failure_class` is the turn's action failure, None if right."""
    item: Prompted = failure.item
    return {
        "mode": mode,
        "kind": failure.kind,
        "dialogue": item.case.dialogue.id,
        "tags": list(item.case.dialogue.tags),
        "turn": item.case.turn,
        "expectation": failure.expectation,
        "failure_class": failure.failure_class,
        "expected": step_label(item.case.reference_step),
        "taken": step_label(item.reply),
        "context": [{"role": m["role"], "content": _content(m)} for m in item.case.context[1:]],
        "reply": item.reply.text,
        "reference": item.case.reference_step.text,
    }


def _content(message: dict) -> str:
    return message_step(message).text if message["role"] == "assistant" else message.get("content", "")


def _score_held_out(settings: Settings, data, all_cases, mode: str, weights, results: dict, on_reply) -> dict:
    """One mode on every held-out bot turn: the policy's first steps, reference losses, the
    summary, tags, action table and failures, added to `results`; returns the summary."""
    items = first_steps(settings, data, all_cases, mode, weights, on_reply)
    reference_losses(weights.model, weights.tokenizer, items, batch_size=settings.build.eval.batch_size)
    summary, by_tag, failures = summarize(items, data.persona.secret)
    summary["examples_in_prompt"] = max(i.examples_used for i in items)
    results["summary"][mode] = summary
    results["by_tag"][mode] = by_tag
    results["actions"][mode] = action_table((i.reply, i.case.reference_step) for i in items)
    failures += action_failures(items, failures)
    results["failures"] += [_failure_entry(mode, f) for f in failures]
    return summary


def evaluate(
    settings: Settings,
    *,
    model_id: str | None = None,
    modes: tuple[str, ...] = MODES,
    progress_bar: bool = True,
    with_conversations: bool = True,
    actions_package: str | None = None,
) -> tuple[dict, Path]:
    """Score `modes` on every bot turn of the held-out dialogues and, with `with_conversations`,
    on the conversation tests (whole conversations, greedy); returns (report, folder)."""
    from tqdm.auto import tqdm

    data = validate(settings)
    check_overlap(data)
    trained = None
    if "fine-tuned" in modes:
        trained = models.get(settings.models_dir, model_id) if model_id else models.active(settings.models_dir)
        if trained is None:
            raise NoTrainedModel(
                "no trained model to evaluate: run 'bot train', or evaluate the baselines with --modes"
            )
    all_cases = cases(data)
    tests = conversation_tests(settings, data) if with_conversations else []
    conversations: dict[str, dict] = {}
    runs: dict[str, list] = {}
    torch.manual_seed(settings.build.train.seed)
    base = None  # the baselines' model: the trained model's own base, in the precision serving uses
    results: dict[str, dict] = {"summary": {}, "by_tag": {}, "actions": {}, "failures": []}
    bar = tqdm(
        total=(len(all_cases) + len(tests)) * len(modes),  # each held-out reply, then each conversation
        disable=not progress_bar,
        unit="step",
        desc="evaluating",
        dynamic_ncols=True,
    )
    for mode in modes:
        bar.set_postfix(mode=mode)
        started = time.monotonic()
        if mode == "fine-tuned":
            weights = load_weights(settings, trained)
        else:
            base = base or load_weights(settings, trained, base_only=True)
            weights = base
        summary = _score_held_out(settings, data, all_cases, mode, weights, results, on_reply=bar.update)
        summary["seconds"] = round(time.monotonic() - started, 1)
        if tests:  # whole conversations, greedy, with the same weights
            bar.set_postfix(mode=f"{mode}, conversations")
            conversations[mode], runs[mode] = test_mode(
                settings, data, tests, mode, weights, package=actions_package, on_run=lambda _: bar.update(1)
            )
            summary["conversation_pass_rate"] = conversations[mode]["pass_rate"]
    bar.close()

    index_file = settings.build_dir / "index.json"
    compiled_hash = json.loads(index_file.read_text())["data_hash"] if index_file.exists() else None
    document = {
        "model_id": trained.id if trained else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_hash": trained.manifest.get("data_hash") if trained else compiled_hash,
        "modes": list(modes),
        **results,
    }
    folder_id = trained.id if trained else BASELINE_ONLY
    conversation_document = None
    if tests:
        json_runs = {mode: [r.to_json() for r in found] for mode, found in runs.items()}
        conversation_document = conversations_document(document["model_id"], conversations, json_runs)
        _, conversation_document = write_conversations(settings, folder_id, conversation_document)
    folder = report_folder(settings, folder_id)
    folder.mkdir(parents=True, exist_ok=True)
    models.write_json(folder / REPORT_FILE, document)
    (folder / "report.html").write_text(render_html(document, conversation_document), encoding="utf-8")
    return document, folder


def test_conversations(
    settings: Settings,
    *,
    model_id: str | None = None,
    modes: tuple[str, ...] | None = None,
    tries: int = 1,
    temperature: float = DEFAULT_TEMPERATURE,
    package: str | None = None,
    name: str | None = None,
    progress_bar: bool = True,
) -> tuple[dict, Path]:
    """`bot test`: the conversation tests in `modes` (default: fine-tuned with the active model,
    or zero-shot when none is trained); writes conversations.json beside the model's report and
    adds them to its report.html. Returns (document, folder)."""
    from tqdm.auto import tqdm

    data = validate(settings)
    tests = [t for t in conversation_tests(settings, data) if not name or name in t.name]
    if not tests:
        raise NoConversationTests(
            f"no conversation tests{f' named like {name!r}' if name else ''} in "
            f"{settings.data_dir.name}/conversation_tests/ (see docs/conversation-tests.md)"
        )
    trained = models.get(settings.models_dir, model_id) if model_id else models.active(settings.models_dir)
    modes = modes or (("fine-tuned",) if trained else ("zero-shot",))
    if "fine-tuned" in modes and trained is None:
        raise NoTrainedModel("no trained model to test: run 'bot train', or test a prompting mode with --modes")
    summaries, runs = {}, {}
    base = None
    total = len(tests) * (1 + (tries if tries > 1 else 0)) * len(modes)
    with tqdm(total=total, disable=not progress_bar, unit="conversation", desc="testing", dynamic_ncols=True) as bar:
        for mode in modes:
            bar.set_postfix(mode=mode)
            if mode == "fine-tuned":
                weights = load_weights(settings, trained)
            else:
                base = base or load_weights(settings, trained, base_only=True)
                weights = base
            summaries[mode], found = test_mode(
                settings,
                data,
                tests,
                mode,
                weights,
                tries=tries,
                temperature=temperature,
                package=package,
                on_run=lambda _: bar.update(1),
            )
            runs[mode] = [r.to_json() for r in found]
    folder_id = trained.id if trained else BASELINE_ONLY
    document = conversations_document(trained.id if trained else None, summaries, runs)
    folder, document = write_conversations(settings, folder_id, document)
    report = stored_report(settings, folder_id)
    # The console and the gate read a model's figures from its report: the whole suite's pass rates go there too.
    if report and not name:
        for mode, found in summaries.items():
            if mode in report.get("summary", {}):
                report["summary"][mode]["conversation_pass_rate"] = found["pass_rate"]
        models.write_json(folder / REPORT_FILE, report)
    (folder / "report.html").write_text(render_html(report, document), encoding="utf-8")
    return document, folder
