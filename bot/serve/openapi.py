"""The API described: each routes module's table of routes (method, path, handler, request model,
response model, error statuses), a `RouteTable` filled by decorating its handlers, both registers
the handlers and builds the OpenAPI 3.1 document served at `/openapi.json`. Schemas come from the
pydantic models that check request bodies (`http.read_body`), so the document cannot drift from
what the server accepts; the fuzz test (tests/test_api_fuzz.py) checks every answer against it."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from bot.serve.admin_auth import check_admin
from bot.serve.keys import ADMIN_TOKEN, ALSO_ADMIN, OTHER_BRANDS_TOKENS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
ADMIN_SCHEME = "adminToken"


class ErrorBody(BaseModel):
    """Every error answer: a message for people, never a traceback."""

    error: str = Field(description="What is wrong, and where.")


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter, with its JSON schema."""

    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One route. `summary` and `description` are its operation's in the document (a RouteTable
    takes them from the handler's docstring). `ok` is the model of a JSON success body, or the
    JSON schema of a body no model describes; `events` the model of each server-sent event of a
    route that streams (text/event-stream); `media` the success content type of a route that
    answers neither (text/html...). `errors` are the statuses besides the ones implied (400 and
    413 for a body, 401, 403 and 429 for an admin route, 400 and 404 for a path parameter)."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    ok: type[BaseModel] | dict[str, Any] | None = None
    events: type[BaseModel] | None = None
    media: str = "text/plain"
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    admin: bool = False
    ok_status: int = 200
    description: str = field(default="", compare=False)
    error_body: type[BaseModel] | None = None  # the model of its error answers, when not ErrorBody


API_ROUTES = web.AppKey("api_routes", list)  # every Route registered on the app, in order


class UnknownPathParameter(ValueError):
    """A route's path names a parameter its route table does not know."""


class MissingSummary(ValueError):
    """A route's handler has no docstring, whose first line would be the route's summary."""


def summary_and_description(handler: Handler) -> tuple[str, str]:
    """The handler's docstring as an OpenAPI summary and description (the convention of apispec
    and flask-smorest): its first line is the summary (its first paragraph, up to the first blank
    line, joined into one line); the rest, dedented as `inspect.cleandoc` does, the description."""
    first, _, rest = inspect.cleandoc(handler.__doc__ or "").partition("\n\n")
    return " ".join(line.strip() for line in first.splitlines()), rest.strip("\n")


PATH_PARAMETER = re.compile(r"\{([_a-zA-Z][_a-zA-Z0-9]*)[:}]")  # {name} or {name:regex}, as aiohttp reads them


class RouteTable(Sequence[Route]):
    """The routes of one module, in the spirit of aiohttp's `web.RouteTableDef`: decorating a
    handler with `@routes.post(path, body=..., ok=..., errors=(...))` adds its route. The route's
    summary is the first line of the handler's docstring, its description the rest of it (unless
    the route gives `description=`); a handler with no docstring raises MissingSummary, when the
    module is imported. Every route takes the table's tag, and its admin default unless the route
    says otherwise (`register` puts an admin route behind the token check). The parameters a path
    names (`{sender}`) are the table's `path_params` of those names, listed first; query and
    header parameters follow, as the route lists them in `params`. A path naming a parameter the
    table does not know raises UnknownPathParameter, when the module is imported."""

    def __init__(self, tag: str, *, admin: bool = False, path_params: Iterable[Param] = ()) -> None:
        self.tag = tag
        self.admin = admin
        self.path_params = {param.name: param for param in path_params}
        assert all(p.where == "path" for p in self.path_params.values()), f"{tag}: path_params takes path parameters"
        self._routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        params: tuple[Param, ...] = (),
        admin: bool | None = None,
        description: str = "",
        **fields,
    ) -> Callable[[Handler], Handler]:
        assert all(p.where != "path" for p in params), f"{method} {path}: path parameters come from the path"
        found = tuple(self._path_param(method, path, name) for name in PATH_PARAMETER.findall(path))
        admin = self.admin if admin is None else admin
        params = found + params

        def add(handler: Handler) -> Handler:
            summary, from_docstring = summary_and_description(handler)
            if not summary:
                raise MissingSummary(
                    f"{method} {path}: handler {handler.__qualname__} has no docstring "
                    "(its first line is the route's summary in the OpenAPI document)"
                )
            doc = description or from_docstring
            route = Route(
                method, path, handler, summary, self.tag, params=params, admin=admin, description=doc, **fields
            )
            self._routes.append(route)
            return handler

        return add

    def get(self, path: str, **fields) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **fields)

    def post(self, path: str, **fields) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **fields)

    def put(self, path: str, **fields) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **fields)

    def _path_param(self, method: str, path: str, name: str) -> Param:
        if name not in self.path_params:
            known = ", ".join(sorted(self.path_params)) or "none"
            raise UnknownPathParameter(
                f"{method} {path}: the {self.tag!r} route table knows no path parameter {{{name}}} (it knows: {known})"
            )
        return self.path_params[name]

    def __getitem__(self, index):
        return self._routes[index]

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)


def admin_only(handler: Handler) -> Handler:
    """`handler` behind the admin token check (`http.check_admin`), which runs first."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        app = request.app
        check_admin(request, app[ADMIN_TOKEN], app.get(ALSO_ADMIN, ()), app.get(OTHER_BRANDS_TOKENS, ()))
        return await handler(request)

    return checked


def register(app: web.Application, routes: Iterable[Route]) -> None:
    """Adds the routes to the app's router (a GET answers HEAD too, as aiohttp's add_get does)
    and to the table the document is built from. An admin route's handler goes behind the admin
    token check, so a route the document says needs the token cannot answer without it."""
    routes = list(routes)
    for route in routes:
        handler = admin_only(route.handler) if route.admin else route.handler
        if route.method == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method, route.path, handler)
    app.setdefault(API_ROUTES, []).extend(routes)


def _statuses(route: Route) -> list[int]:
    implied = set(route.errors)
    if route.body is not None:
        implied |= {400, 413}
    if route.admin:
        implied |= {401, 403, 429}  # 429: too many wrong tokens from one address (bot.serve.throttle)
    if any(p.where == "path" for p in route.params):
        implied |= {400, 404}
    return sorted(implied)


class ServerSentEvent(BaseModel):
    """One server-sent event, as an EventSource reads it."""

    event: str | None = Field(None, description="Its name (an EventSource's `message` when there is none).")
    data: str = Field(description="JSON, unless said otherwise.")
    id: str | None = Field(None, description="Where a reconnecting EventSource resumes (Last-Event-ID).")


def _success(route: Route, refs: dict) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if isinstance(route.ok, type):
        content["application/json"] = {"schema": refs[(route.ok, "serialization")]}
    elif route.ok is not None:
        content["application/json"] = {"schema": route.ok}
    if route.events is not None:
        content["text/event-stream"] = {"schema": refs[(route.events, "serialization")]}
    if not content:
        content[route.media] = {"schema": {"type": "string"}}
    return {"description": HTTPStatus(route.ok_status).phrase, "content": content}


def _parameter(param: Param) -> dict[str, Any]:
    """One parameter of an operation: a path parameter is always required."""
    required = param.required or param.where == "path"
    return {
        "name": param.name,
        "in": param.where,
        "required": required,
        "description": param.description,
        "schema": param.schema,
    }


def _operation(route: Route, refs: dict) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary, "tags": [route.tag]}
    if route.description:
        operation["description"] = route.description
    if route.params:
        operation["parameters"] = [_parameter(p) for p in route.params]
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    if route.admin:
        operation["security"] = [{ADMIN_SCHEME: []}]
    error = {"application/json": {"schema": {"$ref": REF.format(model=(route.error_body or ErrorBody).__name__)}}}
    operation["responses"] = {str(route.ok_status): _success(route, refs)} | {
        str(status): {"description": HTTPStatus(status).phrase, "content": error} for status in _statuses(route)
    }
    return operation


def document(routes: list[Route], *, title: str = "bot", version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; JSON schemas (draft 2020-12, as OpenAPI 3.1 uses)
    under components/schemas, referenced with `$ref`."""
    models = {(r.body, "validation") for r in routes if r.body is not None}
    models |= {(r.ok, "serialization") for r in routes if isinstance(r.ok, type)}
    models |= {(r.events, "serialization") for r in routes if r.events is not None}
    models |= {(r.error_body, "serialization") for r in routes if r.error_body is not None}
    models.add((ErrorBody, "serialization"))
    ordered = sorted(models, key=lambda m: (m[0].__name__, m[1]))
    refs, schemas = models_json_schema(ordered, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "A contact-centre chatbot: Rasa's REST channel, a streaming chat endpoint, "
            "an OpenAI-compatible endpoint, conversation history and live feed, human agents, operator routes.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                ADMIN_SCHEME: {"type": "http", "scheme": "bearer", "description": "The server's BOT_ADMIN_TOKEN."}
            },
        },
    }


routes = RouteTable("operator")


@routes.get("/openapi.json", ok={"type": "object"})
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route

    This document, built from the route table the server registered."""
    return web.json_response(document(request.app[API_ROUTES]))
