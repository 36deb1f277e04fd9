"""Errors answer as JSON, never a traceback: the table from typed error to HTTP status, the errors
middleware, errors inside a stream already started, and bad HTTP logged as one line."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot.conversations.migrations import MigrationError
from bot.conversations.store import ConversationBusy, StoreUnavailable
from bot.engine.protocol import EngineBusy, EngineClosed, EngineError, PromptTooLong
from bot.engine.remote import ModelServerUnavailable
from bot.errors import BaseModelUnavailable, BotError, InvalidFiles, RenderError
from bot.models import UnknownModel

log = logging.getLogger("bot.serve")


# The typed errors a request can meet -> HTTP status; the first entry the error is an instance of
# wins, so a subclass comes before its base. Faults of the request answer 4xx, faults of the
# server's own making (its store, its engine, the model server it relies on) 5xx. Any other
# error is a 500: a typed one with its message, anything else with no details (it is logged).
# tests/test_http_errors.py walks the table.
STATUS_OF: dict[type[BotError], int] = {
    # the request's
    PromptTooLong: 413,  # the prompt and the reply's room don't fit in the model's context
    RenderError: 413,  # the conversation doesn't fit (RenderCancelled too: its client has gone)
    UnknownModel: 400,  # these three: an admin's reload found the active model unusable; the one in service stays
    BaseModelUnavailable: 400,
    InvalidFiles: 400,
    # the server's own
    ConversationBusy: 503,  # the conversation's previous message is still being answered
    StoreUnavailable: 503,
    EngineBusy: 503,  # the engine's queue is full
    EngineClosed: 503,  # the server is stopping, or a reload retired the engine
    ModelServerUnavailable: 502,  # the remote model server failed
    EngineError: 500,  # generation failed
    MigrationError: 500,
}


def public_message(error: Exception, doing: str) -> str:
    """What a client may be told about an error: a typed error's message, else nothing (logged)."""
    if isinstance(error, BotError):
        return str(error)
    log.error("error while %s", doing, exc_info=error)
    return "internal error; the server log has the details"


def json_error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class BadRequestLog(logging.LoggerAdapter):
    """aiohttp's server logger (the `logger` of its request handler, see create_app's
    handler_args) with one change: a request that is not valid HTTP (oversized request line or
    header, bad framing or chunking), which aiohttp answers 400 itself, is logged as one line
    with no traceback. Every other error keeps its traceback: that one is a bug."""

    def __init__(self, logger: logging.Logger | None = None):
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def _one_line(self, level: int, msg, args, kwargs) -> bool:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            return False
        remote = args[0] if args else "?"
        # what went wrong, without what was sent (aiohttp quotes the offending bytes after a colon or in quotes)
        first = next(iter(str(error.message or "").strip().splitlines()), "")
        what = re.split(r"[:'\"]", first, maxsplit=1)[0].strip()[:100] or "malformed"
        # 400: aiohttp's status for them all
        self.log(level, "bad HTTP request from %s answered 400 (%s): %s", remote, type(error).__name__, what)
        return True

    def exception(self, msg, *args, **kwargs):
        if not self._one_line(logging.WARNING, msg, args, kwargs):
            super().exception(msg, *args, **kwargs)

    def debug(self, msg, *args, **kwargs):
        if not self._one_line(logging.DEBUG, msg, args, kwargs):
            super().debug(msg, *args, **kwargs)


def status_of(error: Exception) -> int:
    """A typed error's status (STATUS_OF), else 500."""
    return next((s for kind, s in STATUS_OF.items() if isinstance(error, kind)), 500)


def _answer_to(request: web.Request, error: Exception) -> tuple[int, str, dict | None]:
    """(status, message, headers) for an error a handler raised: an HTTP exception's status and
    text, a typed error's status and message, anything else a 500 with no details (logged). A
    non-error HTTP exception (a redirect) is raised again."""
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        headers = {k: v for k, v in error.headers.items() if k.lower() not in ("content-type", "content-length")}
        default_text = error.text is None or error.text.startswith(f"{error.status}:")  # aiohttp's default text
        message = error.reason if default_text else error.text
        return error.status, message, headers
    return status_of(error), public_message(error, f"handling {request.method} {request.path}"), None


def error_response(request: web.Request, error: Exception, respond=None) -> web.StreamResponse:
    """The answer to an error a handler raised, built by `respond(status, message, headers)`
    (`json_error` by default)."""
    return (respond or json_error)(*_answer_to(request, error))


async def write_stream_error(request: web.Request, response: web.StreamResponse, error: Exception, frame) -> None:
    """An error met once a stream's headers are out (its status can no longer change), written
    into the stream as `frame(status, message)` gives it, in the stream's format: the status and
    message `errors_middleware` would have answered with, never a traceback."""
    status, message, _ = _answer_to(request, error)
    await response.write(frame(status, message))


def errors_middleware():
    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except Exception as e:
            return error_response(request, e)

    return errors
