"""The drafts admin API (admin token): stored conversations made into redacted dialogue drafts,
and the drafts under training_data/drafts/ listed, read, edited (validated on every save, with
line numbers), accepted into dialogues/ or tests/, or rejected. The operator console uses it;
`bot data export` and `bot data review` do the same from the terminal (bot/pipelines/drafts.py)."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from bot.errors import Problem
from bot.pipelines import drafts
from bot.serve.bodies import read_body
from bot.serve.keys import SETTINGS, STORE
from bot.serve.openapi import Param, RouteTable
from bot.serve.routes.common import SENDER_PARAM, conversation_id

NAME_PARAM = Param(
    "name",
    "path",
    {"type": "string", "pattern": f"^{drafts.NAME.pattern}$"},
    "The draft's name: its file name under training_data/drafts/ without .yml.",
)
routes = RouteTable("drafts", admin=True, path_params=(NAME_PARAM, SENDER_PARAM))


class DraftProblem(BaseModel):
    line: int | None = Field(description="The line in the draft's text (1-based), when known.")
    where: str = Field(description="file:line:column, as `bot data validate` prints it.")
    message: str


class DraftListed(BaseModel):
    name: str
    valid: bool
    problems: list[DraftProblem]
    source: str | None = Field(description="The conversation it was drafted from.")


class DraftList(BaseModel):
    drafts: list[DraftListed]


class DraftText(BaseModel):
    name: str
    text: str
    valid: bool
    problems: list[DraftProblem]


class NewDraft(DraftText):
    redacted: dict[str, int] = Field(
        description="Different values replaced, per kind (email, card, phone, postcode, account, order, name)."
    )


class DraftEdit(BaseModel):
    text: str = Field(description="The draft's whole YAML text; saved even when it is not valid.")


class AcceptDraft(BaseModel):
    into: Literal["dialogues", "tests"] = Field(description="dialogues: trained on; tests: held out for evaluation.")


class Accepted(BaseModel):
    path: str = Field(description="Where the dialogue now is, relative to the project.")


class Rejected(BaseModel):
    rejected: str


def problem_json(problem: Problem) -> dict:
    return {"line": problem.line, "where": f"{problem.path}:{problem.line}:{problem.col}", "message": problem.message}


def draft_json(info: drafts.DraftInfo) -> dict:
    return {
        "name": info.name,
        "text": info.text,
        "valid": info.valid,
        "problems": [problem_json(p) for p in info.problems],
    }


def _listed_json(info: drafts.DraftInfo) -> dict:
    """A draft as the list shows it: no text, and where it came from."""
    problems = [problem_json(p) for p in info.problems]
    return {"name": info.name, "valid": info.valid, "problems": problems, "source": info.source}


async def _call(function, *args):
    """A drafts library call off the event loop; an unknown draft is a 404, a refusal a 409."""
    try:
        return await asyncio.to_thread(function, *args)
    except drafts.DraftNotFound as e:
        raise web.HTTPNotFound(text=str(e)) from None
    except drafts.DraftRefused as e:
        raise web.HTTPConflict(text=str(e)) from None


@routes.get("/api/drafts", ok=DraftList)
async def list_drafts(request: web.Request) -> web.Response:
    """The dialogue drafts awaiting review, each with its validation"""
    found = await _call(drafts.list_drafts, request.app[SETTINGS])
    listed = [_listed_json(d) for d in found]
    return web.json_response({"drafts": listed})


@routes.get("/api/drafts/{name}", ok=DraftText)
async def get_draft(request: web.Request) -> web.Response:
    """A draft's YAML text and its validation problems"""
    draft = await _call(drafts.read_draft, request.app[SETTINGS], request.match_info["name"])
    return web.json_response(draft_json(draft))


@routes.put("/api/drafts/{name}", body=DraftEdit, ok=DraftText)
async def save_draft(request: web.Request) -> web.Response:
    """Save a draft's edited text; answers with its validation

    Saves the text as it is (a person is editing it) and answers with its validation."""
    body = await read_body(request, DraftEdit)
    draft = await _call(drafts.save_draft, request.app[SETTINGS], request.match_info["name"], body.text)
    return web.json_response(draft_json(draft))


@routes.post("/api/drafts/{name}/accept", body=AcceptDraft, ok=Accepted, errors=(409,))
async def accept_draft(request: web.Request) -> web.Response:
    """Accept a draft into training_data/dialogues/ or tests/

    409 with the reason when the draft is invalid, duplicates a dialogue, or would leak a
    training conversation into the tests (or a test into training)."""
    body = await read_body(request, AcceptDraft)
    settings = request.app[SETTINGS]
    path = await _call(drafts.accept, settings, request.match_info["name"], body.into)
    return web.json_response({"path": path.relative_to(settings.root).as_posix()})


@routes.post("/api/drafts/{name}/reject", ok=Rejected)
async def reject_draft(request: web.Request) -> web.Response:
    """Reject a draft (its file is deleted)"""
    name = request.match_info["name"]
    await _call(drafts.reject, request.app[SETTINGS], name)
    return web.json_response({"rejected": name})


@routes.post("/api/conversations/{sender}/draft", ok=NewDraft, ok_status=201, errors=(409, 503))
async def draft_from_conversation(request: web.Request) -> web.Response:
    """Make a redacted dialogue draft of a stored conversation

    A redacted draft of one stored conversation, written under training_data/drafts/."""
    sender = conversation_id(request)
    settings, store = request.app[SETTINGS], request.app[STORE]
    events = await store.events(sender)
    if not events:
        raise web.HTTPNotFound(text=f"no stored conversation '{sender}'")
    try:
        made = await asyncio.to_thread(drafts.write_draft, settings, sender, events)
    except drafts.NothingToDraft as e:
        raise web.HTTPConflict(text=str(e)) from None
    return web.json_response(draft_json(made) | {"redacted": made.redacted}, status=201)
