"""The operator console's own admin routes (admin token): stored conversations found by
activity, handoff, rating and words, each one's whole timeline; trained models with their
evaluation figures, and activating one (or rolling back) while the server keeps answering."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from bot import models
from bot.conversations.search import ConversationFilter, find_conversations
from bot.evaluation.stored import stored_report
from bot.serve.keys import RELOAD_LOCK, SETTINGS, STORE
from bot.serve.openapi import Param, RouteTable
from bot.serve.routes.admin import ModelInfo, swap_in_active_model
from bot.serve.routes.common import SENDER_PARAM, Event, conversation_id

MODEL_ID = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
MAX_LIMIT = 500

_FLAG = {"type": "string", "enum": ["true", "false"]}
LIST_PARAMS = (
    Param("q", "query", {"type": "string"}, "Only conversations with these words (any case) in a message or the id."),
    Param("handed_off", "query", _FLAG, "true: only conversations a person was asked for or took over."),
    Param("rated", "query", {"type": "string", "enum": ["up", "down"]}, "Only conversations with a message rated so."),
    Param(
        "since",
        "query",
        {"type": "string", "format": "date"},
        "Only conversations active on or after this UTC date (YYYY-MM-DD).",
    ),
    Param(
        "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "At most this many (default 50)."
    ),
)
MODEL_PARAM = Param("model_id", "path", {"type": "string", "pattern": f"^{MODEL_ID}$"}, "The trained model's id.")
routes = RouteTable("console", admin=True, path_params=(SENDER_PARAM, MODEL_PARAM))


class ConversationRow(BaseModel):
    sender: str
    started: float
    last_active: float
    events: int
    handed_off: bool = Field(description="A person was asked for or took the conversation over.")
    ratings: dict[str, int] = Field(description='{"up": n, "down": n}: the latest vote on each rated message.')
    last_customer_message: str | None


class ConversationList(BaseModel):
    conversations: list[ConversationRow]


class Timeline(BaseModel):
    sender: str
    events: list[Event] = Field(description="Every stored event, oldest first.")


class TrainedModelRow(BaseModel):
    id: str
    active: bool
    previous: bool = Field(
        description="It was the active model before the last activation (activating it rolls back)."
    )
    created: str | None
    description: str
    gate: dict[str, Any] | None = Field(
        description="The gate's verdict when it was trained: activated, forced, reason."
    )
    metrics: dict[str, Any] | None = Field(description="The fine-tuned summary of its evaluation report.")
    report: bool = Field(description="An evaluation report is stored (GET /api/models/{id}/report).")


class TrainedModels(BaseModel):
    models: list[TrainedModelRow]


class Activated(BaseModel):
    model: ModelInfo
    previous: ModelInfo
    seconds: float


def _query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise web.HTTPBadRequest(text=f"query parameter '{name}' must be true or false, not '{value[:40]}'")
    return value == "true"


def conversation_filter(request: web.Request) -> tuple[ConversationFilter, int]:
    """The filter and limit of the list's query string; a parameter given is checked (400 names it)."""
    query = request.query
    if unknown := sorted(set(query) - {p.name for p in LIST_PARAMS}):
        raise web.HTTPBadRequest(
            text=f"unknown query parameter '{unknown[0][:40]}': use q, handed_off, rated, since or limit"
        )
    rated = query.get("rated")
    if rated not in (None, "up", "down"):
        raise web.HTTPBadRequest(text=f"query parameter 'rated' must be up or down, not '{rated[:40]}'")
    since = None
    if (raw := query.get("since")) is not None:
        try:
            since = dt.datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"query parameter 'since' must be a date YYYY-MM-DD, not '{raw[:40]}'"
            ) from None
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise web.HTTPBadRequest(text=f"query parameter 'limit' must be a whole number from 1 to {MAX_LIMIT}")
    text = query.get("q", "").strip() or None
    handed_off = _query_bool(request, "handed_off")
    return ConversationFilter(since=since, handed_off=handed_off, rated=rated, text=text), limit


@routes.get("/api/admin/conversations", ok=ConversationList, params=LIST_PARAMS, errors=(400, 503))
async def list_conversations(request: web.Request) -> web.Response:
    """Stored conversations, found by activity, handoff, rating and words

    Most recently active first; `since` is a UTC date (last active on or after it)."""
    wanted, limit = conversation_filter(request)
    found = await find_conversations(request.app[STORE], wanted, limit)
    rows = [
        {
            "sender": c.sender,
            "started": c.summary.started,
            "last_active": c.summary.last_active,
            "events": c.summary.events,
            "handed_off": c.handed_off,
            "ratings": c.ratings,
            "last_customer_message": c.last_customer_message,
        }
        for c in found
    ]
    return web.json_response({"conversations": rows})


@routes.get("/api/admin/conversations/{sender}", ok=Timeline, errors=(503,))
async def timeline(request: web.Request) -> web.Response:
    """A stored conversation's every event (its timeline)"""
    sender = conversation_id(request)
    events = await request.app[STORE].events(sender)
    if not events:
        raise web.HTTPNotFound(text=f"no stored conversation '{sender}'")
    return web.json_response({"sender": sender, "events": events})


def _model_id(request: web.Request) -> str:
    model_id = request.match_info["model_id"]
    if not re.fullmatch(MODEL_ID, model_id):
        raise web.HTTPBadRequest(text="invalid model id")
    return model_id


def _trained(request: web.Request, model_id: str) -> models.TrainedModel:
    try:
        return models.get(request.app[SETTINGS].models_dir, model_id)
    except models.UnknownModel as e:
        raise web.HTTPNotFound(text=str(e)) from None


def _describe(model: models.TrainedModel) -> str:
    manifest, training = model.manifest, model.manifest.get("training", {})
    parts = [f"base {manifest.get('base_model', '?')}"]
    if "steps" in training:
        parts.append(f"{training['steps']} steps")
    if training.get("final_train_loss") is not None:
        parts.append(f"train loss {training['final_train_loss']:.3f}")
    return ", ".join(parts)


@routes.get("/api/models", ok=TrainedModels)
async def trained_model_list(request: web.Request) -> web.Response:
    """Trained models with their gate verdict and evaluation figures

    Oldest first, as `bot models list` shows them."""
    settings = request.app[SETTINGS]
    folder = settings.models_dir
    active, previous = models.active_id(folder), models.previous_id(folder)
    rows = []
    for model in await asyncio.to_thread(models.trained_models, folder):
        report = await asyncio.to_thread(stored_report, settings, model.id)
        rows.append(
            {
                "id": model.id,
                "active": model.id == active,
                "previous": model.id == previous,
                "created": model.manifest.get("created"),
                "description": _describe(model),
                "gate": model.manifest.get("activation"),
                "metrics": (report or {}).get("summary", {}).get("fine-tuned"),
                "report": report is not None,
            }
        )
    return web.json_response({"models": rows})


@routes.get("/api/models/{model_id}/report", ok={"type": "object"})
async def model_report(request: web.Request) -> web.Response:
    """A trained model's evaluation report (JSON)

    The report `bot eval` (and `bot train`'s gate) wrote for the model: its figures as JSON."""
    model = _trained(request, _model_id(request))
    report = await asyncio.to_thread(stored_report, request.app[SETTINGS], model.id)
    if report is None:
        raise web.HTTPNotFound(text=f"model '{model.id}' has no evaluation report: run 'bot eval --model {model.id}'")
    return web.json_response(report)


@routes.post("/api/models/{model_id}/activate", ok=Activated, errors=(502, 503))
async def activate_model(request: web.Request) -> web.Response:
    """Make a trained model the active one and serve it, without downtime

    Makes the model the active one and serves it without dropping a request (as
    POST /api/model/reload does). If it cannot be loaded, the model that was active stays so."""
    model = _trained(request, _model_id(request))
    folder = request.app[SETTINGS].models_dir
    async with request.app[RELOAD_LOCK]:
        was, before = models.active_id(folder), models.previous_id(folder)
        models.activate(folder, model.id)
        try:
            body = await swap_in_active_model(request.app)
        except BaseException:
            models.restore_markers(folder, was, before)
            raise
    return web.json_response(body)
