"""A model's evaluation report as stored: results/<model id>/report.json (and report.html beside
it). Reading one needs no torch, so the server's admin routes can show reports in a front-end
that loads no weights."""

from __future__ import annotations

import json
from pathlib import Path

from bot.config import Settings

REPORT_FILE = "report.json"


def report_folder(settings: Settings, model_id: str) -> Path:
    return settings.results_dir / model_id


def stored_report(settings: Settings, model_id: str) -> dict | None:
    """The model's report.json, or None if it was never evaluated."""
    path = report_folder(settings, model_id) / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
