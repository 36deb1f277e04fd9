"""The conversation tests of one model in each mode: run (bot.evaluation.conversation_suite),
summed up, and written as results/<model id>/conversations.json and, for CI, a JUnit XML file.
`bot test` and `bot eval` (and so the training gate) both come through here."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from bot import models
from bot.config import Settings
from bot.data.conversation_tests import ConversationTest
from bot.engine.protocol import Sampling
from bot.evaluation.conversation_suite import ConversationRun, mode_model, run_tests, summary
from bot.evaluation.stored import report_folder

CONVERSATIONS_FILE = "conversations.json"
DEFAULT_TEMPERATURE = 0.7  # the sampled tries of pass^k, as τ-bench samples them


def test_mode(
    settings: Settings,
    data,
    tests: list[ConversationTest],
    mode: str,
    weights,
    *,
    tries: int = 1,
    temperature: float = DEFAULT_TEMPERATURE,
    package: str | None = None,
    on_run: Callable[[ConversationRun], None] | None = None,
) -> tuple[dict, list[ConversationRun]]:
    """Every test once, greedy (the bot customers get: its pass rate), then, with `tries` above 1,
    `tries` more times sampled at `temperature` for pass^1..pass^tries. (summary, runs: the greedy
    ones first)."""

    async def run() -> tuple[dict, list[ConversationRun]]:
        model = mode_model(settings, mode, data, weights)
        try:
            started = time.monotonic()
            known = f"{data.persona.name} {data.persona.company}"
            greedy = await run_tests(settings, model, tests, package=package, on_run=on_run, known=known)
            found = summary(greedy, 1, 0.0, time.monotonic() - started)
            sampled: list[ConversationRun] = []
            if tries > 1:
                model.sampling = Sampling(temperature)
                started = time.monotonic()
                sampled = await run_tests(
                    settings, model, tests, tries=tries, package=package, on_run=on_run, known=known
                )
                found["sampled"] = summary(sampled, tries, temperature, time.monotonic() - started)
            return found, greedy + sampled
        finally:
            await model.close()

    return asyncio.run(run())


def junit_xml(document: dict) -> str:
    """The greedy runs of each mode as JUnit XML: a test suite per mode, a test case per test."""
    root = ET.Element("testsuites", name="bot conversation tests")
    for mode in document["modes"]:
        greedy = [r for r in document["runs"][mode] if r["temperature"] == 0.0]
        failed = sum(not r["passed"] for r in greedy)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"conversation tests ({mode})",
            tests=str(len(greedy)),
            failures=str(failed),
            time=str(sum(r["seconds"] for r in greedy)),
        )
        for r in greedy:
            case = ET.SubElement(
                suite, "testcase", classname=r["where"].split(":")[0], name=r["test"], time=str(r["seconds"])
            )
            if not r["passed"]:
                reasons = r["failures"] + ([r["error"]] if r["error"] else [])
                node = ET.SubElement(case, "failure", message=reasons[0] if reasons else "failed")
                node.text = "\n".join(reasons) + "\n\nwhat happened:\n" + "\n".join(r["transcript"])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def conversations_document(model_id: str | None, summaries: dict, runs: dict) -> dict:
    return {
        "model_id": model_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "modes": list(summaries),
        "summary": summaries,
        "runs": runs,
    }


def write_conversations(settings: Settings, folder_id: str, document: dict) -> tuple[Path, dict]:
    """results/<id>/conversations.json, merged by mode with what is there (a mode tested now
    replaces its earlier results; the others stay, so modes can be tested one run at a time).
    Returns (its folder, the merged document)."""
    from bot.evaluation.cases import MODES

    folder = report_folder(settings, folder_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONVERSATIONS_FILE
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"summary": {}, "runs": {}}
    summaries = {**earlier.get("summary", {}), **document["summary"]}
    runs = {**earlier.get("runs", {}), **document["runs"]}
    order = sorted(summaries, key=lambda m: MODES.index(m) if m in MODES else len(MODES))
    merged = dict(document, modes=order, summary={m: summaries[m] for m in order}, runs={m: runs[m] for m in order})
    merged["tested"] = list(document["modes"])  # the modes of this run
    models.write_json(path, merged)
    return folder, merged
