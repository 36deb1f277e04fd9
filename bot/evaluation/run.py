"""`bot eval`: the four modes side by side on the held-out dialogues, written as a report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bot import models
from bot.config import Settings
from bot.data.person_requests import PersonRequestRule
from bot.data.project import validate
from bot.engine.loader import call_constraint, load_weights
from bot.errors import BotError
from bot.evaluation.cases import MODES, Prompted, cases, check_overlap, prompted
from bot.evaluation.generation import generate_replies, reference_losses
from bot.evaluation.metrics import Failure, action_failures, action_table, step_label, summarize
from bot.evaluation.report_html import render_html
from bot.evaluation.stored import REPORT_FILE, report_folder
from bot.rendering import message_step

BASELINE_ONLY = "base"  # results folder when no fine-tuned model is evaluated


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


def evaluate(
    settings: Settings,
    *,
    model_id: str | None = None,
    modes: tuple[str, ...] = MODES,
    progress_bar: bool = True,
) -> tuple[dict, Path]:
    """Score `modes` on every bot turn of the held-out dialogues; returns (report, folder)."""
    from tqdm.auto import tqdm

    cfg = settings.build.eval
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
    budget = settings.build.model.max_length - cfg.max_new_tokens
    torch.manual_seed(settings.build.train.seed)
    base = None  # the baselines' model: the trained model's own base, in the precision serving uses
    results: dict[str, dict] = {"summary": {}, "by_tag": {}, "actions": {}, "failures": []}
    bar = tqdm(
        total=len(all_cases) * len(modes),
        disable=not progress_bar,
        unit="reply",
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
        model, tokenizer = weights.model, weights.tokenizer
        items = [prompted(c, mode, data, tokenizer, cfg.few_shot_k, budget) for c in all_cases]
        # As the served bot answers: the person rule first, tool calls under the constraint.
        generate_replies(
            model,
            tokenizer,
            items,
            max_batch=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            on_reply=bar.update,
            constraint=call_constraint(model, tokenizer, data.actions),
            person_rule=PersonRequestRule.of(data.persona.asking_for_a_person),
        )
        reference_losses(model, tokenizer, items, batch_size=cfg.batch_size)
        summary, by_tag, failures = summarize(items, data.persona.secret)
        summary["seconds"] = round(time.monotonic() - started, 1)
        summary["examples_in_prompt"] = max(i.examples_used for i in items)
        results["summary"][mode] = summary
        results["by_tag"][mode] = by_tag
        results["actions"][mode] = action_table((i.reply, i.case.reference_step) for i in items)
        failures += action_failures(items, failures)
        results["failures"] += [_failure_entry(mode, f) for f in failures]
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
    folder = report_folder(settings, trained.id if trained else BASELINE_ONLY)
    folder.mkdir(parents=True, exist_ok=True)
    models.write_json(folder / REPORT_FILE, document)
    (folder / "report.html").write_text(render_html(document), encoding="utf-8")
    return document, folder
