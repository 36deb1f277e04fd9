"""`bot tune`: what it prints. The search itself is bot/pipelines/tune.py."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bot.cli.output import say, text_table

TUNE_HELP = """\
Grid-search the training settings that matter (learning rate, epochs, LoRA rank, lora.top_layers)
on a validation split carved from training_data/dialogues/ (15% of the dialogues by id hash, at
least one, left out of every candidate's training); training_data/tests/ is never read. Each
candidate trains into a temporary folder (models/ and build/ are left alone) and is scored on
the validation dialogues' bot turns as 'bot eval' scores its fine-tuned mode, ranked by action
accuracy, then expectation pass rate, then chrF.

--full (the default on CUDA) tries 36 candidates: learning_rate 5e-4, 1e-3, 2e-3 x epochs 2, 3 x
lora.rank 8, 16, 32 x lora.top_layers 16, all. --reduced (the default on the CPU) tries
learning_rate 1e-3 and 2e-3 at config.yml's rank and layers, each trained for one epoch
(epochs is not tuned and stays as config.yml says); on a 2-core CPU without bf16, with the
starter data, that takes about {reduced_minutes} minutes (estimated from one measured training).
The full grid on that CPU would take about a day.

Writes results/tune/<id>/tune.json and report.html, and the best settings to tuned.yml; apply
them with 'bot train --config tuned.yml'."""
REDUCED_MINUTES = "47"


def tune_table(document: dict) -> str:
    keys = list(document["grid"])
    header = (
        ("rank", "#")
        + tuple(keys)
        + ("action acc", "expect pass", "chrF", "handoff acc", "leaks", "val loss", "train s", "score s")
    )
    rows = [header]
    for c in document["candidates"]:
        s = c["scores"]
        rows.append(
            (str(c["rank"]), str(c["number"]))
            + tuple("null" if c["settings"].get(k) is None else str(c["settings"][k]) for k in keys)
            + (
                f"{s['action_accuracy']:.0%}",
                f"{s['expectation_pass_rate']:.0%}",
                f"{s['chrf']:.1f}",
                f"{s['handoff_accuracy']:.0%}",
                str(s["leaks"]),
                "-" if c["validation_loss"] is None else f"{c['validation_loss']:.3f}",
                f"{c['train_seconds']:.0f}",
                f"{c['score_seconds']:.0f}",
            )
        )
    return text_table(rows, left=0)


def cmd_tune(args) -> int:
    from transformers.utils import logging as transformers_logging

    from bot.config import load_settings
    from bot.pipelines.tune import describe, load_grid, tune

    transformers_logging.disable_progress_bar()
    settings = load_settings(args.project)
    grid = load_grid(Path(args.grid), args.grid) if args.grid else None
    reduced = True if args.reduced else False if args.full else None
    output = Path(args.output).resolve() if args.output else None

    result = tune(settings, grid=grid, reduced=reduced, output=output, report=say)
    document, best = result.document, result.best
    print(tune_table(document))
    shown = os.path.relpath(result.tuned_file)
    print(
        f"\nbest: candidate {best.number} ({describe(best.values)}), ranked by {document['ranking']}, "
        f"{len(document['candidates'])} candidates in {document['seconds'] / 60:.1f} min"
    )
    print(f"wrote {shown}; report: {os.path.relpath(result.folder / 'report.html')}")
    project = "" if args.project == "." else f" -C {args.project}"
    print(f"apply it: bot{project} train --config {shown}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune",
        help="grid-search learning rate, epochs, LoRA rank and layers on a validation split of the training dialogues",
        description=TUNE_HELP.format(reduced_minutes=REDUCED_MINUTES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search = tune.add_mutually_exclusive_group()
    search.add_argument(
        "--reduced",
        action="store_true",
        help=f"2 learning rates, 1 epoch each: about {REDUCED_MINUTES} min on a 2-core CPU (default without CUDA)",
    )
    search.add_argument("--full", action="store_true", help="the full 36-candidate grid (default on CUDA)")
    tune.add_argument(
        "--grid",
        metavar="FILE",
        help="YAML: dotted train settings to lists of values, e.g. 'lora.rank: [8, 16]' (replaces the built-in grid)",
    )
    tune.add_argument(
        "--output", metavar="FILE", help="where to write the best settings (default: tuned.yml in the project)"
    )
    tune.set_defaults(run=cmd_tune)
