"""The preference data admin API (admin token): what training_data/preferences/ holds, for the
console's Preferences panel. `bot data preferences` writes it and `bot data review` reviews it
(bot/pipelines/preferences.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, Field

from bot.pipelines import preferences
from bot.serve.keys import SETTINGS
from bot.serve.openapi import RouteTable
from bot.serve.routes.drafts import DraftProblem, problem_json

routes = RouteTable("preferences", admin=True)


class PreferenceFileListed(BaseModel):
    name: str
    preferences: int = Field(description="Rows in the file.")
    draft: bool = Field(description="Still waiting for review (never trained on until accepted).")
    valid: bool
    problems: list[DraftProblem]


class PreferenceSummary(BaseModel):
    rated_up: int = Field(description="Replies customers rated up.")
    rated_down: int = Field(description="Replies customers rated down.")
    pairs: int = Field(description="Agents' replies in place of the bot's.")
    reviewed: int = Field(description="Rows a person has accepted: what the preference stage trains on.")
    waiting: int = Field(description="Rows waiting for review.")
    files: list[PreferenceFileListed]


@routes.get("/api/preferences", ok=PreferenceSummary)
async def list_preferences(request: web.Request) -> web.Response:
    """What the preference data holds: rated replies, pairs, reviewed or waiting, per file"""
    counts = await asyncio.to_thread(preferences.count_preferences, request.app[SETTINGS])
    files = [
        {
            "name": f.name,
            "preferences": len(f.preferences),
            "draft": f.draft,
            "valid": f.valid,
            "problems": [problem_json(p) for p in f.problems],
        }
        for f in counts.files
    ]
    totals = {k: getattr(counts, k) for k in ("rated_up", "rated_down", "pairs", "reviewed", "waiting")}
    return web.json_response(totals | {"files": files})
