"""Request bodies checked before a handler reads them: JSON, nested at most serve.max_json_depth,
against the route's pydantic model."""

from __future__ import annotations

import json
import re
from itertools import accumulate

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

JSON_DEPTH = web.AppKey("json_depth", int)  # serve.max_json_depth; the body size limit is the app's client_max_size


# a string, or the rest of the text after an unclosed quote: never backtracks
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*"?')


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text, found without decoding it (strings
    dropped, then a running count of brackets), so a hostile body never reaches the recursive
    decoder. Linear in the text, with every step done by C code."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`: 413 over the app's client_max_size (serve.max_body_bytes),
    400 when it is not JSON, nests deeper than serve.max_json_depth, or does not match `model`."""
    try:
        raw = await request.read()  # raises 413 past client_max_size
    except HttpProcessingError as e:  # broken framing of the body (chunk sizes, length)
        first_line = (e.message or "bad framing").splitlines()[0]
        raise web.HTTPBadRequest(text=f"request body is malformed: {first_line}") from None
    except ConnectionError:  # the client left before its body was complete: nobody to answer, nothing to log
        raise web.HTTPBadRequest(text="request body is incomplete: the connection closed") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise web.HTTPBadRequest(text=f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    limit = request.app[JSON_DEPTH]
    if (depth := nesting_depth(text)) > limit:
        raise web.HTTPBadRequest(
            text=f"request body is nested too deeply: {depth:,} levels of arrays or objects, "
            f"at most {limit} are accepted"
        )
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise web.HTTPBadRequest(text=f"request body is not valid JSON: {e}") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise web.HTTPBadRequest(text="invalid request: " + "; ".join(problems)) from None
