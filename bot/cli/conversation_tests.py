"""`bot test`: the conversation tests, whole conversations through the reply policy, for the
model customers get (or another, or a prompting mode to compare). Part of the CLI: it prints."""

from __future__ import annotations

import argparse
import os
import sys

from bot.cli.output import percent, text_table

SHOWN_FAILURES = 10  # failed tests printed in full (all of them are in conversations.json and report.html)


def conversations_table(document: dict) -> str:
    """One row per mode: tests passed (greedy), what the bot made up in them (grounded values
    sent / names used that nobody gave: the target is 0 / 0), then pass^1..pass^k of the sampled
    tries."""
    tries = max((s.get("sampled", {}).get("tries", 1) for s in document["summary"].values()), default=1)
    header = ("mode", "tests", "passed", "pass rate", "made up")
    if tries > 1:
        temperature = next(s["sampled"]["temperature"] for s in document["summary"].values() if "sampled" in s)
        header += tuple(f"pass^{k} (T={temperature:g})" for k in range(1, tries + 1))
    rows = [header + ("seconds",)]
    for mode in document["modes"]:
        s = document["summary"][mode]
        made_up = f"{s.get('invented_values', '-')} / {s.get('invented_names', '-')}"
        row = (mode, str(s["tests"]), str(s["passed"]), percent(s["pass_rate"]), made_up)
        seconds = s["seconds"]
        if tries > 1:
            sampled = s.get("sampled", {"pass_hat": {}, "seconds": 0})
            row += tuple(percent(sampled["pass_hat"].get(str(k))) for k in range(1, tries + 1))
            seconds += sampled["seconds"]
        rows.append(row + (f"{seconds:.0f}",))
    return text_table(rows)


def failures_text(document: dict, mode: str, limit: int = SHOWN_FAILURES) -> str:
    """Each failed greedy run of `mode`: where the test is, what failed, what the bot did."""
    failed = [r for r in document["runs"][mode] if r["temperature"] == 0.0 and not r["passed"]]
    blocks = []
    for r in failed[:limit]:
        reasons = r["failures"] + ([f"error: {r['error']}"] if r["error"] else [])
        lines = [f"FAILED {r['test']} ({r['where']})"] + [f"  {why}" for why in reasons]
        lines += ["  what happened:"] + [f"    {line}" for line in r["transcript"]]
        blocks.append("\n".join(lines))
    if len(failed) > limit:
        blocks.append(f"... and {len(failed) - limit} more failed tests ({mode})")
    return "\n\n".join(blocks)


def cmd_test(args) -> int:
    from transformers.utils import logging as transformers_logging

    from bot.config import load_settings
    from bot.evaluation.cases import MODES
    from bot.evaluation.conversation_results import DEFAULT_TEMPERATURE
    from bot.evaluation.run import test_conversations

    transformers_logging.disable_progress_bar()
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else None
    unknown = [m for m in modes or () if m not in MODES]
    if unknown:
        print(f"error: unknown mode '{unknown[0]}': choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return 2
    temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    if args.repeat > 1 and temperature <= 0:
        print("error: --repeat needs a --temperature above 0 (greedy tries are all the same)", file=sys.stderr)
        return 2
    document, folder = test_conversations(
        load_settings(args.project),
        model_id=args.model,
        modes=modes,
        tries=args.repeat,
        temperature=temperature,
        package=args.actions,
        name=args.name,
    )
    tested = document["tested"]
    if args.junit:
        from bot.evaluation.conversation_results import junit_xml

        with open(args.junit, "w", encoding="utf-8") as out:
            out.write(junit_xml(dict(document, modes=tested)))
    shown = "fine-tuned" if "fine-tuned" in tested else tested[0]
    failures = failures_text(document, shown)
    if failures:
        print(failures + "\n")
    print(conversations_table(document))
    results, report = (os.path.relpath(folder / name) for name in ("conversations.json", "report.html"))
    print(f"\nresults: {results}; report: {report}")
    everything_passed = all(document["summary"][m]["passed"] == document["summary"][m]["tests"] for m in tested)
    return 0 if everything_passed else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    test = commands.add_parser(
        "test", help="conversation tests: whole conversations through the reply policy, with assertions"
    )
    test.add_argument("--model", metavar="ID", help="the trained model to test (default: the active one)")
    test.add_argument(
        "--modes",
        metavar="LIST",
        help="comma-separated subset of zero-shot,one-shot,few-shot,fine-tuned "
        "(default: fine-tuned, or zero-shot when no model is trained)",
    )
    test.add_argument(
        "--repeat", type=int, default=1, metavar="K", help="also run each test K times sampled: pass^1..pass^K"
    )
    test.add_argument("--temperature", type=float, metavar="T", help="the sampled tries' temperature (default: 0.7)")
    test.add_argument("-k", "--name", metavar="TEXT", help="only the tests whose name contains TEXT")
    test.add_argument(
        "--actions", metavar="PACKAGE", help="the action package to run (default: the project's actions/, if any)"
    )
    test.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")
    test.set_defaults(run=cmd_test)
