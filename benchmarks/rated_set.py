"""A rated set from the starter bot itself, and what the preference stage does with it: a case
where the right answer is known.

    .venv/bin/python benchmarks/rated_set.py [--dialogues 80] [--method kto] [--epochs 1]
                                            [--learning-rate 1e-5] [--beta 0.1] [--project .]

1. Every bot step of a spread sample of the training dialogues (its own history up to that step,
   as `bot eval` prompts a held-out turn) is answered by the active fine-tuned model through the
   reply policy customers get, greedy.
2. Each step is rated by the evaluation's own checks: up when it is the reference's step (the
   right action with the right arguments, a handoff where one is due, words where words are due)
   and leaks nothing; down otherwise. A broken call has nothing to train on and is left out. The
   rows are written to build/rated-set/rated.yml as preference data, never under training_data/:
   they are not customers' ratings.
3. The preference stage (train.preference in config.yml, with the method and rates given here)
   trains on them from the fine-tuned model; the result is saved beside it as a model of its own,
   not activated (its manifest says `rated_set`).
4. Both models, evaluated again in the same run, on the held-out dialogues and the conversation
   tests (never rated), side by side:
   each measure before and after, with the number of rated replies. A loss is reported as one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402
from machine import machine  # noqa: E402

from bot import models  # noqa: E402
from bot.base_model import load_tokenizer  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.data.compiler import dialogue_messages, preference_examples  # noqa: E402
from bot.data.preferences import check_preferences, read_preference_text  # noqa: E402
from bot.data.project import validate  # noqa: E402
from bot.data.prompt import system_prompt  # noqa: E402
from bot.data.schema import ActionTurn, BotTurn, HandoffTurn  # noqa: E402
from bot.engine.weights import load_weights  # noqa: E402
from bot.evaluation.cases import Case  # noqa: E402
from bot.evaluation.generation import first_steps  # noqa: E402
from bot.evaluation.metrics import classify, leaks  # noqa: E402

SHOWN = {
    "action_accuracy": "held-out action accuracy",
    "handoff_accuracy": "held-out handoff accuracy",
    "expectation_pass_rate": "held-out expectations",
    "adversarial_pass_rate": "adversarial tests",
    "conversation_pass_rate": "conversation tests",
    "chrf": "chrF",
    "leaks": "leaks",
}


def spread(dialogues: list, n: int) -> list:
    """`n` dialogues taken evenly through the list (all when it has fewer)."""
    if n >= len(dialogues):
        return dialogues
    return [dialogues[round(i * len(dialogues) / n)] for i in range(n)]


def step_cases(data, dialogues) -> list[tuple[Case, list]]:
    """Each trained bot step of the dialogues as a case, with the dialogue turns before it."""
    system = system_prompt(data.persona, data.actions)
    found = []
    for d in dialogues:
        messages = dialogue_messages(d, system)
        steps = [j for j, t in enumerate(d.turns) if isinstance(t, BotTurn | ActionTurn | HandoffTurn)]
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for k, (j, i) in enumerate(zip(steps, replies, strict=True), 1):
            turn = d.turns[j]
            if isinstance(turn, BotTurn) and not turn.train:
                continue
            found.append((Case(d, k, messages[:i], messages[i]), d.turns[:j]))
    return found


def last_turn(step) -> dict | None:
    """The model's step as a dialogue turn (None for a broken call or an empty reply)."""
    if step.broken_call is not None:
        return None
    if step.handoff:
        return {"handoff": (step.arguments or {}).get("reason", "")}
    if step.calls_action:
        return {"action": step.action, "args": step.arguments or {}}
    return {"bot": step.text} if step.text.strip() else None


def rated_file(data, items, before_turns) -> tuple[str, dict]:
    entries, counts = [], {"up": 0, "down": 0, "left out": 0}
    for item, turns in zip(items, before_turns, strict=True):
        last = last_turn(item.reply)
        if last is None:
            counts["left out"] += 1
            continue
        right = classify(item.reply, item.case.reference_step) is None
        rating = "up" if right and not leaks(item.reply, data.persona.secret) else "down"
        counts[rating] += 1
        context = [t.model_dump(mode="json", exclude_defaults=True) for t in turns]
        entries.append(
            {"id": f"rated-{item.case.dialogue.id}-{item.case.turn}", "rating": rating, "turns": context + [last]}
        )
    header = "# Rated automatically by benchmarks/rated_set.py: NOT customers' ratings.\n"
    return header + yaml.safe_dump({"preferences": entries}, allow_unicode=True, sort_keys=False, width=1000), counts


def tune(settings, fine, rows_file: Path, cfg):
    """The preference stage on `fine`'s adapter (trainable), saved as a model of its own."""
    from bot.training.preference import PreferenceStage, load_preference_rows
    from bot.training.recipe import save_preference_model, trainable_model

    train = settings.build.train
    model, accelerator, tokenizer = trainable_model(settings, fine.adapter_dir)
    rows = load_preference_rows(rows_file, tokenizer, settings.build.model.max_length, cfg.method)
    stage = PreferenceStage(model, accelerator, tokenizer, rows, cfg, seed=train.seed)
    run_dir = settings.models_dir / models.new_id(settings.models_dir)
    # its checkpoints beside the rated rows, not in the model's folder: `bot train --resume`
    # must never take this stage for one of its own
    checkpoint = rows_file.parent / "checkpoint"
    stats = stage.run(checkpoint, checkpoint_every=train.checkpoint_every)
    shutil.rmtree(checkpoint)
    run_dir.mkdir(parents=True)
    not_gated = {"activated": False, "forced": False, "reason": "rated-set benchmark: not gated, never activated"}
    result = save_preference_model(
        run_dir, fine.id, fine.manifest, fine.folder, stage, stats, rated_set=True, activation=not_gated
    )
    return result.model_id, stats


def main() -> int:
    from bot.evaluation.run import evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".")
    parser.add_argument("--dialogues", type=int, default=80, help="training dialogues sampled (not augmented copies)")
    parser.add_argument("--method", choices=["kto"], default="kto", help="the rated set is unpaired: KTO")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--beta", type=float, default=None)
    args = parser.parse_args()

    settings = load_settings(Path(args.project))
    data = validate(settings)
    fine = models.active(settings.models_dir)
    if fine is None:
        raise SystemExit("no active fine-tuned model: run 'bot train' first")
    if "started_from" in fine.manifest:
        raise SystemExit(f"the active model {fine.id} is preference-tuned already: activate a fine-tuned one")
    device = machine()
    dialogues = spread(
        sorted((d for d in data.train if "augmented" not in d.tags), key=lambda d: d.id), args.dialogues
    )
    cases = step_cases(data, dialogues)
    print(f"model: {fine.id}; {device}; {len(dialogues)} training dialogues, {len(cases)} bot steps")

    started = time.monotonic()
    weights = load_weights(settings, fine)
    items = first_steps(settings, data, [case for case, _ in cases], "fine-tuned", weights)
    del weights
    text, counts = rated_file(data, items, [turns for _, turns in cases])
    folder = settings.build_dir / "rated-set"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rated.yml").write_text(text, encoding="utf-8")
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    preferences, problems = read_preference_text(text, "build/rated-set/rated.yml")
    problems += check_preferences(
        preferences,
        data,
        max_length=settings.build.model.max_length,
        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
    )
    starts = sorted((p.dialogue.doc.where(p.dialogue.loc)[0], p.id) for p in preferences)
    bad = {max((s for s in starts if s[0] <= problem.line), default=(0, ""))[1] for problem in problems}
    if problems:
        print(f"  {len(problems)} problems in the rated rows (their rows left out), first: {problems[0]}")
    kept = [p for p in preferences if p.id not in bad]
    rows_file = folder / "preferences.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in preference_examples(data, kept)), encoding="utf-8")
    up = sum(p.rating == "up" for p in kept)
    print(
        f"rated {len(items)} steps in {time.monotonic() - started:.0f} s: {counts['up']} up, {counts['down']} down, "
        f"{counts['left out']} left out (broken calls, empty replies); {len(kept)} rows trained ({up} up)"
    )

    preference = settings.build.train.preference
    update = {"enabled": True, "method": args.method}
    update.update({k: v for k, v in (("epochs", args.epochs), ("learning_rate", args.learning_rate)) if v})
    if args.beta:
        update["beta"] = args.beta
    cfg = preference.model_copy(update=update)
    tuned_id, stats = tune(settings, fine, rows_file, cfg)
    print(
        f"preference stage: {stats['steps']} steps of {cfg.method.upper()} (beta {cfg.beta}, learning rate "
        f"{cfg.learning_rate}), loss {stats['first_loss']} -> {stats['final_loss']}, {stats['seconds']:.0f} s; "
        f"model {tuned_id}"
    )

    # both now, with the same code and engine settings: a stored report may predate either
    before, _ = evaluate(settings, model_id=fine.id, modes=("fine-tuned",))
    after, _ = evaluate(settings, model_id=tuned_id, modes=("fine-tuned",))
    then, now = before["summary"]["fine-tuned"], after["summary"]["fine-tuned"]
    print(f"\n{'measure':<28}{fine.id:>20}{tuned_id:>20}")
    for key, label in SHOWN.items():
        a, b = then.get(key), now.get(key)
        if a is None or b is None:
            continue
        shown = (lambda v: f"{v:.1%}") if key.endswith(("rate", "accuracy")) else (lambda v: f"{v:g}")
        verdict = "" if a == b else ("  better" if (b > a) != (key == "leaks") else "  WORSE")
        print(f"{label:<28}{shown(a):>20}{shown(b):>20}{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
