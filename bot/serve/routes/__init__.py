"""The routes, one module per API area, each with its table of routes (bot.serve.openapi)."""

from bot.serve.routes import (
    admin,
    agent,
    chat,
    completions,
    console,
    console_api,
    drafts,
    preferences,
    ratings,
    train,
    web,
)
from bot.serve.routes import openai as openai_compatible

# The order /openapi.json lists them in.
IN_ORDER = (
    chat,
    openai_compatible,
    completions,
    admin,
    agent,
    ratings,
    train,
    drafts,
    preferences,
    web,
    console_api,
    console,
)
