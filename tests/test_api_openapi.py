"""The OpenAPI document at /openapi.json: valid OpenAPI 3.1, one operation for every route the
app registers, built from the pydantic models that check request bodies."""

from __future__ import annotations

import openapi_spec_validator
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from serve_support import make_project

from bot.serve.keys import ADMIN_TOKEN
from bot.serve.openapi import REF, MissingSummary, Param, RouteTable, UnknownPathParameter, document, register
from bot.serve.routes.agent import AgentMessage
from bot.serve.routes.chat import ChatRequest
from bot.serve.routes.common import SENDER_PARAM
from bot.serve.routes.openai import CompletionRequest
from bot.serve.throttle import ADMIN_FAILURES, FailureThrottle


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


async def test_the_document_is_valid_openapi_3_1_and_lists_every_route(project, serve):
    client, _ = await serve(project)
    response = await client.get("/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"] == "3.1.0"
    openapi_spec_validator.validate(doc)  # raises on an invalid document

    # aiohttp answers HEAD for every GET by itself; every other registered route is documented, and nothing more
    registered = {(r.method.lower(), r.resource.canonical) for r in client.app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, operations in doc["paths"].items() for method in operations}
    assert documented == registered
    assert len(registered) >= 15
    assert ("post", "/api/model/reload") in registered and ("get", "/openapi.json") in registered


async def test_bodies_come_from_the_models_that_check_them(project, serve):
    client, _ = await serve(project)
    doc = await (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for path, method, model in [
        ("/webhooks/rest/webhook", "post", ChatRequest),
        ("/api/chat/stream", "post", ChatRequest),
        ("/v1/chat/completions", "post", CompletionRequest),
        ("/api/conversations/{sender}/messages", "post", AgentMessage),
    ]:
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": REF.format(model=model.__name__)}
        own = model.model_json_schema(ref_template=REF)
        own.pop("$defs", None)
        assert schemas[model.__name__] == own
    assert schemas["ChatRequest"]["properties"]["sender"]["pattern"].startswith("^[A-Za-z0-9")
    assert schemas["ErrorBody"]["required"] == ["error"]


async def test_admin_routes_declare_the_bearer_token_and_every_error_is_the_error_schema(project, serve):
    client, _ = await serve(project)
    doc = await (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's BOT_ADMIN_TOKEN.",
    }
    admin = {(m, p) for p, ops in doc["paths"].items() for m, op in ops.items() if "security" in op}
    assert admin == {
        ("post", "/api/model/reload"),
        ("get", "/api/brands"),
        ("get", "/api/handoffs"),
        ("post", "/api/conversations/{sender}/messages"),
        ("post", "/api/conversations/{sender}/resume"),
        ("get", "/api/admin/conversations"),
        ("get", "/api/admin/conversations/{sender}"),
        ("get", "/api/models"),
        ("get", "/api/models/{model_id}/report"),
        ("post", "/api/models/{model_id}/activate"),
        ("post", "/api/train"),
        ("get", "/api/train"),
        ("post", "/api/train/cancel"),
        ("get", "/api/drafts"),
        ("get", "/api/drafts/{name}"),
        ("put", "/api/drafts/{name}"),
        ("post", "/api/drafts/{name}/accept"),
        ("post", "/api/drafts/{name}/reject"),
        ("get", "/api/preferences"),
        ("post", "/api/conversations/{sender}/draft"),
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if "security" in op:
                assert {"401", "403"} <= set(op["responses"])
            # vLLM's route answers errors in OpenAI's shape
            own = "OpenAIErrorBody" if path == "/v1/completions" else "ErrorBody"
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    assert answer["content"] == {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{own}"}}
                    }, (method, path)
    assert doc["components"]["schemas"]["OpenAIErrorBody"]["required"] == ["error"]
    completions = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(completions)
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    openai = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "413", "429"} <= set(openai)
    assert set(openai["200"]["content"]) == {"application/json", "text/event-stream"}
    feed = doc["paths"]["/api/conversations/{sender}/events"]["get"]
    assert [(p["name"], p["in"]) for p in feed["parameters"]] == [
        ("sender", "path"),
        ("after", "query"),
        ("Last-Event-ID", "header"),
    ]


def test_a_route_takes_its_tables_tag_and_admin_default_and_its_path_parameters_from_the_path():
    routes = RouteTable("things", admin=True, path_params=(SENDER_PARAM,))
    words = Param("q", "query", {"type": "string"}, "Words.")

    @routes.get("/things/{sender}", params=(words,))
    async def thing(request):
        """A thing"""

    @routes.post("/things", admin=False, errors=(409,))
    async def add_thing(request):
        """Add a thing"""

    assert [(r.method, r.path, r.handler, r.tag, r.admin) for r in routes] == [
        ("GET", "/things/{sender}", thing, "things", True),
        ("POST", "/things", add_thing, "things", False),
    ]
    assert routes[0].params == (SENDER_PARAM, words)  # the path's parameters first
    assert routes[1].params == () and routes[1].errors == (409,)


@pytest.mark.parametrize("path", ["/things/{sender}/{name}", "/files/{name:.+}"])
def test_a_path_naming_a_parameter_its_table_does_not_know_fails_when_the_route_is_declared(path):
    routes = RouteTable("things", path_params=(SENDER_PARAM,))
    with pytest.raises(UnknownPathParameter, match=r"\{name\}.*it knows: sender"):
        routes.get(path)
    assert len(routes) == 0


def test_a_routes_summary_is_its_handlers_docstrings_first_line_and_its_description_the_rest():
    routes = RouteTable("things")

    @routes.get("/things")
    async def things(request):
        """Every thing

        Oldest first;
            indented as written."""

    @routes.get("/thing", description="Said by the route.")
    async def thing(request):
        """A thing

        Not this: the route's own description wins."""

    @routes.post("/things")
    async def add_thing(request):
        """Add a thing"""

    assert [(r.summary, r.description) for r in routes] == [
        ("Every thing", "Oldest first;\n    indented as written."),
        ("A thing", "Said by the route."),
        ("Add a thing", ""),
    ]
    paths = document(list(routes))["paths"]
    assert paths["/things"]["get"]["summary"] == "Every thing"
    assert paths["/things"]["get"]["description"] == "Oldest first;\n    indented as written."
    assert paths["/thing"]["get"]["description"] == "Said by the route."
    assert paths["/things"]["post"]["summary"] == "Add a thing" and "description" not in paths["/things"]["post"]


def test_a_handler_without_a_docstring_fails_when_its_route_is_declared():
    routes = RouteTable("things")
    with pytest.raises(MissingSummary, match=r"^POST /things: handler .*\bnameless has no docstring"):

        @routes.post("/things")
        async def nameless(request):
            pass

    assert len(routes) == 0


async def test_an_admin_route_answers_only_with_the_token_though_its_handler_does_not_check():
    routes = RouteTable("things", admin=True)

    @routes.get("/secret")
    async def secret(request):
        """Something only an operator may read"""
        return web.json_response({"secret": 42})

    @routes.get("/open", admin=False)
    async def open_(request):
        """Something anyone may read"""
        return web.json_response({"open": True})

    app = web.Application()
    app[ADMIN_TOKEN] = "s3cret"
    app[ADMIN_FAILURES] = FailureThrottle(5, 60)
    register(app, routes)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/secret")).status == 401
        assert (await client.get("/secret", headers={"Authorization": "Bearer wrong"})).status == 401
        answer = await client.get("/secret", headers={"Authorization": "Bearer s3cret"})
        assert answer.status == 200 and await answer.json() == {"secret": 42}
        assert (await client.get("/open")).status == 200
    assert [route.handler for route in routes] == [secret, open_]  # the document names the handlers themselves
