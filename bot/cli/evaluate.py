"""`bot eval`: the fine-tuned model against zero-, one- and few-shot prompting, per turn."""

from __future__ import annotations

import argparse
import os
import sys

from bot.cli.output import percent, text_table


def _failure_classes(counts: dict[str, int]) -> str:
    """'3 wrong action, 1 bad arguments': the classes that occurred, else 'none'."""
    occurred = [f"{n} {name}" for name, n in counts.items() if n]
    return ", ".join(occurred) or "none"


def eval_table(document: dict) -> str:
    """The four modes side by side, then expectations passed and chrF per tag, then one line per
    mode with its action failures by class."""
    columns = (
        "conversations",
        "chrF",
        "action acc",
        "handoff acc",
        "expect pass",
        "adversarial",
        "leaks",
        "loss",
        "seconds",
    )
    rows = [("mode",) + columns]
    for mode in document["modes"]:
        s = document["summary"][mode]
        rows.append(
            (
                mode,
                percent(s.get("conversation_pass_rate")),
                f"{s['chrf']:.1f}",
                percent(s["action_accuracy"]),
                percent(s["handoff_accuracy"]),
                percent(s["expectation_pass_rate"]),
                percent(s["adversarial_pass_rate"]),
                str(s["leaks"]),
                "-" if s["loss"] is None else f"{s['loss']:.3f}",
                f"{s['seconds']:.0f}",
            )
        )
    tags = sorted({t for m in document["modes"] for t in document["by_tag"][m]}, key=lambda t: (t != "adversarial", t))
    tag_rows = [("tag (expect pass / chrF)",) + tuple(document["modes"])]
    for tag in tags:
        cells = []
        for mode in document["modes"]:
            t = document["by_tag"][mode].get(tag)
            cells.append("-" if t is None else f"{t['expectation_pass_rate']:.0%} / {t['chrf']:.0f}")
        tag_rows.append((tag,) + tuple(cells))

    actions = document.get("actions") or {}
    width = max(len(m) for m in document["modes"])
    class_lines = ["action failures"] + [
        f"{mode.ljust(width)}  " + _failure_classes(actions[mode]["failure_classes"])
        for mode in document["modes"]
        if mode in actions
    ]
    return text_table(rows) + "\n\n" + text_table(tag_rows) + ("\n\n" + "\n".join(class_lines) if actions else "")


def cmd_eval(args) -> int:
    from transformers.utils import logging as transformers_logging

    from bot.config import load_settings
    from bot.evaluation.cases import MODES
    from bot.evaluation.run import evaluate

    transformers_logging.disable_progress_bar()
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: unknown mode '{unknown[0]}': choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    document, folder = evaluate(load_settings(args.project), model_id=args.model, modes=modes)
    print(eval_table(document))
    expectations = sum(f.get("kind", "expectation") == "expectation" for f in document["failures"])
    print(f"\n{expectations} failed expectations; report: {os.path.relpath(folder / 'report.html')}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", help="fine-tuned against zero-, one- and few-shot on the held-out dialogues"
    )
    evaluate.add_argument("--model", metavar="ID", help="the model to evaluate (default: the active one)")
    evaluate.add_argument(
        "--modes", metavar="LIST", help="comma-separated subset of zero-shot,one-shot,few-shot,fine-tuned"
    )
    evaluate.set_defaults(run=cmd_eval)
