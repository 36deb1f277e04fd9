"""`bot train --progress-file FILE`: what training does, for a program to follow, as JSON lines
(one object a line, appended and flushed as it happens):

  {"event": "step", "step": 3, "steps": 40, "eta_s": 12.5, "loss": 2.31}   at the start and after each optimizer step
  {"event": "done", "model_id": "...", "trained": true, "activated": true,
   "gate": {"passed": true, "summary": "..."}}                             it finished, after the gate's evaluation
                                                                            (gate: null when nothing was trained)
  {"event": "failed", "error": "..."}                                      it stopped on an error (the CLI's message)

The server's training job (bot/pipelines/training_job.py) reads it; nothing here imports torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STEP, DONE, FAILED = "step", "done", "failed"


class ProgressFile:
    """The writing side. The file is started empty."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def _write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    def step(self, progress) -> None:
        """`progress`: a bot.training.recipe.StepProgress."""
        self._write(
            {
                "event": STEP,
                "step": progress.step,
                "steps": progress.steps,
                "eta_s": progress.eta_s,
                "loss": progress.loss,
            }
        )

    def done(
        self, model_id: str, *, trained: bool, activated: bool, gate_passed: bool | None, gate_summary: str
    ) -> None:
        gate = None if gate_passed is None else {"passed": gate_passed, "summary": gate_summary}
        self._write({"event": DONE, "model_id": model_id, "trained": trained, "activated": activated, "gate": gate})

    def failed(self, error: str) -> None:
        self._write({"event": FAILED, "error": error})


@dataclass
class ProgressReader:
    """The reading side: `read()` returns the records appended since the last call (only whole
    lines; a line being written is left for the next call)."""

    path: Path
    offset: int = 0

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as source:
                source.seek(self.offset)
                chunk = source.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
