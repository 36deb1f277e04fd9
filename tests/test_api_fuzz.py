"""Every route of the published API fuzzed from its own OpenAPI document (schemathesis, on
hypothesis), against a real server on a real port with the scripted engine: valid and invalid
requests, admin routes with and without the token. No answer may be a 5xx, break the document
(status, content type, body schema), accept invalid data, or carry a traceback or an exception
name; the server answers /health afterwards and logged no traceback."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import sys
import time
from collections import Counter

import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from serve_support import ADMIN_TOKEN, make_project, scripted_model, settings_of

from bot.serve.app import create_app
from bot.serve.routes.train import TRAINING

# Per operation, generation mode and (admin routes) with and without the token: 80 examples each
# (hypothesis' default is 100) keep the whole suite within its time; 200 each took three minutes.
EXAMPLES = 80
FEWER = {
    "POST /v1/chat/completions": 40,
    "GET /api/conversations/{sender}/events": 10,
}  # the slowest to generate; the feed never ends by itself
FEED_READ_S = 0.25  # a feed is read until it has been silent this long (also the most its answer may take to start)
NO_INPUT_EXAMPLES = 3  # an operation with no parameters and no body: the same request each time
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXCEPTION_CLASSES = {n: v for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
EXCEPTION_NAMES = sorted(n for n in EXCEPTION_CLASSES if n != "Exception")
LEAK = re.compile(
    r"Traceback|\b(?:"
    + "|".join(EXCEPTION_NAMES)
    + r"|ValidationError|JSONDecodeError|HttpProcessingError|BadHttpMessage|LineTooLong)\b"
)

# No limit may stop the fuzzer: it is the server's answers that are under test, not its rate limits.
UNLIMITED = "serve:\n  rate_per_client: 1000000\n  rate_per_conversation: 1000000\n  admin_failures_allowed: 1000000\n"


def fuzz(base_url: str) -> Counter:
    """Runs every operation of the served document; returns the requests sent per operation."""
    session = requests.Session()
    served = session.get(f"{base_url}/openapi.json", timeout=10)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())  # (from_url would leave out the document's own route)
    sent: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        admin = "security" in operation.definition.raw
        feed = operation.path.endswith("/events")
        name = f"{operation.method.upper()} {operation.path}"
        has_input = "parameters" in operation.definition.raw or "requestBody" in operation.definition.raw
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            for token in (ADMIN_TOKEN, None) if admin else (None,):
                headers = {"Authorization": f"Bearer {token}"} if token else None
                max_examples = FEWER.get(name, EXAMPLES) if has_input else NO_INPUT_EXAMPLES
                run_operation(session, base_url, operation, name, mode, headers, feed, max_examples, sent)
    session.close()
    return sent


def _query_sent_as_generated(case) -> bool:
    """requests leaves out a query parameter whose value is None or []: an invalid case built that
    way reaches the server as a valid request, so it is not one."""
    query_values = (case.query or {}).values()
    return all(v is not None and v != [] for v in query_values)


def run_operation(session, base_url, operation, name, mode, headers, feed, max_examples, sent: Counter) -> None:
    """Sends one operation's generated cases in one generation mode with one set of headers."""
    checks = CHECKS + [negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    timeout = FEED_READ_S if feed else 30

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case):
        assume(mode is GenerationMode.POSITIVE or _query_sent_as_generated(case))
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout)
        sent[name] += 1
        case.validate_response(response, checks=checks, headers=headers)
        content_type = response.headers.get("content-type", [""])[0]
        static = content_type.startswith(("text/html", "text/javascript"))  # files, not answers
        assert static or not LEAK.search(response.text), f"{case.method} {case.formatted_path}: {response.text[:500]}"

    one()


async def test_every_route_fuzzed_from_the_published_document(tmp_path, cache_dir, tokenizer, caplog):
    project = make_project(tmp_path / "bot", cache_dir, config=UNLIMITED)
    settings_ = settings_of(project)
    app = create_app(settings_, load_model=lambda: scripted_model(settings_, tokenizer), admin_token=ADMIN_TOKEN)
    # POST /api/train starts this stand-in, never a real training
    app[TRAINING].command = [
        sys.executable,
        "-c",
        "pass",
    ]
    # as `bot serve` runs: a client that leaves cancels its handler
    server = TestServer(app, handler_cancellation=True, access_log=None)
    await server.start_server()
    caplog.set_level(logging.INFO)
    try:
        base_url = str(server.make_url("")).rstrip("/")
        started = time.monotonic()
        sent = await asyncio.to_thread(fuzz, base_url)
        seconds = time.monotonic() - started
        routes = {f"{r.method} {r.resource.canonical}" for r in app.router.routes() if r.method != "HEAD"}
        assert set(sent) == routes  # every registered route was fuzzed
        total = sum(sent.values())
        print(f"\nfuzzed {total} requests on {len(sent)} routes in {seconds:.1f} s: {dict(sent)}")
        assert total >= 3000
        health = await asyncio.to_thread(requests.get, f"{base_url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    finally:
        await server.close()
