"""`bot train`: fine-tune, gate and activate, with progress bars or a progress file."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from bot.cli.output import say
from bot.errors import BotError


def _train(args, progress):
    from transformers.utils import logging as transformers_logging

    from bot.config import apply_overlay, load_settings
    from bot.pipelines.train import train_and_activate

    transformers_logging.disable_progress_bar()
    settings = load_settings(args.project)
    if args.config:
        settings = apply_overlay(settings, Path(args.config), args.config)
    return train_and_activate(
        settings,
        resume=args.resume,
        if_needed=args.if_needed,
        force=args.force,
        report=say,
        progress_bar=progress is None,
        on_step=progress.step if progress else None,
    )


def cmd_train(args) -> int:
    from bot.training.progress_file import ProgressFile

    progress = None
    # Under `accelerate launch`, the main process writes it.
    if args.progress_file and os.environ.get("RANK", "0") == "0":
        progress = ProgressFile(args.progress_file)  # it replaces the progress bars
        # As a shell's background job: the program following it stops it with SIGINT.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        outcome = _train(args, progress)
    except BotError as e:
        if progress:
            progress.failed(str(e))
        raise
    if not outcome.main_process:
        return 0
    if progress:
        progress.done(
            outcome.model.id,
            trained=outcome.trained,
            activated=outcome.activated,
            gate_passed=outcome.passed_gate,
            gate_summary=outcome.reason,
        )
    if not outcome.trained:
        inactive = "not active: it did not pass the gate; 'bot models activate' overrides"
        state = "active" if outcome.activated else inactive
        print(f"model {outcome.model.id} already matches the training data: nothing to train ({state})")
        return 0
    t = outcome.model.manifest["training"]
    print(
        f"trained {outcome.model.id} in {t['seconds']:.0f} s: {t['steps']} steps, {t['tokens']:,} tokens "
        f"({t['tokens_per_second']:.0f}/s on {t['device']}, {t['precision']}), "
        f"held-out loss {t['held_out_loss'][-1]:.3f}"
    )
    report = os.path.relpath(outcome.report_dir / "report.html")
    if outcome.activated:
        forced = " (forced)" if outcome.model.manifest["activation"]["forced"] else ""
        print(f"activated{forced}: {outcome.reason}; report: {report}")
    else:
        print(f"not activated, the previous model stays live: {outcome.reason}; see {report} (--force overrides)")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="fine-tune a LoRA adapter on the training data and activate it")
    switches = {
        "--resume": "continue the last interrupted run from its checkpoint",
        "--if-needed": "do nothing when a model already matches the data",
        "--force": "activate the new model even if it fails the gate",
    }
    for flag, help in switches.items():
        train.add_argument(flag, action="store_true", help=help)
    files = {
        "--config": "apply FILE's 'train:' section over config.yml's (e.g. the tuned.yml 'bot tune' writes)",
        "--progress-file": "write progress as JSON lines to FILE instead of progress bars "
        "(steps, ETA, loss, the gate's verdict)",
    }
    for flag, help in files.items():
        train.add_argument(flag, metavar="FILE", help=help)
    train.set_defaults(run=cmd_train)
