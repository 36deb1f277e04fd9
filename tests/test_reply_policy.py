"""One reply policy: `bot eval` (and `bot tune`, which scores with the same function), `bot chat`
and the server take the same step for the same context, because they run the same code
(bot.policy.reply) on the same weights."""

from __future__ import annotations

import asyncio
import builtins

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from conftest import make_tiny_project
from serve_support import settings_of

from bot import models
from bot.cli import chat as cli_chat
from bot.cli import main
from bot.data.project import validate
from bot.data.prompt import system_prompt
from bot.engine.response_model import ResponseModel
from bot.engine.weights import load_weights, start_engine
from bot.evaluation.cases import Case, Prompted
from bot.evaluation.generation import policy_replies
from bot.serve.app import create_app

SAME_LENGTH = "eval:\n  max_new_tokens: 12\nserve:\n  max_new_tokens: 12\n"
CONTEXTS = [
    "hiya, where's my order ES-1009 pls",  # the model writes
    "can I speak to a real person please",  # the person rule hands off first
]


def eval_step(weights, settings, data, message: str):
    messages = [{"role": "system", "content": system_prompt(data.persona, data.actions)}]
    messages.append({"role": "user", "content": message})
    item = Prompted(Case(data.test[0], 1, messages, {"role": "assistant", "content": ""}), messages)
    serve = settings.build.serve
    policy_replies(weights, [item], serve=serve, max_batch=4, max_new_tokens=settings.build.eval.max_new_tokens)
    return item.reply


def served_model(weights, settings) -> ResponseModel:
    engine = start_engine(weights, settings.build.serve, settings.build.model.max_length)
    return ResponseModel(engine, weights.tokenizer, weights.profile, None, settings.build.model.max_length)


async def server_reply(weights, settings, message: str) -> list[dict]:
    client = TestClient(TestServer(create_app(settings, load_model=lambda: served_model(weights, settings))))
    await client.start_server()
    try:
        response = await client.post("/webhooks/rest/webhook", json={"sender": "same-step", "message": message})
        assert response.status == 200
        return await response.json()
    finally:
        await client.close()


async def chat_reply(weights, settings, message: str, monkeypatch, capsys) -> str:
    lines = iter([message])

    def typed(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", typed)
    capsys.readouterr()
    await cli_chat.chat_in_process(settings, "chat-same-step", load_model=lambda: served_model(weights, settings))
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bot> ")]
    assert len(said) == 1
    return said[0].removeprefix("bot> ")


@pytest.mark.parametrize("message", CONTEXTS)
async def test_eval_chat_and_the_server_take_the_same_step(
    message, tmp_path, tiny_base, cache_dir, monkeypatch, capsys
):
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, extra=SAME_LENGTH)
    (project / "endpoints.yml").write_text("tracker_store:\n  type: sqlite\n  path: conversations.sqlite3\n")
    settings = settings_of(project)
    data = validate(settings)
    # fp32: bf16 (this CPU's serving precision) rounds a prompt computed in two pieces (a cached
    # system prompt, then the rest) differently from one piece, and the tiny random model amplifies it
    weights = load_weights(settings, None, dtype=torch.float32)

    step = await asyncio.to_thread(eval_step, weights, settings, data, message)  # evaluation runs its own loop
    served = await server_reply(weights, settings, message)
    chatted = await chat_reply(weights, settings, message, monkeypatch, capsys)

    if step.handoff:
        assert message == CONTEXTS[1]
        assert served == [{"recipient_id": "same-step", "text": weights.profile.handoff_message}]
        assert chatted == weights.profile.handoff_message
    else:
        assert not step.calls_action and step.text  # the tiny random model writes text
        assert [m["text"] for m in served] == [step.text]
        assert chatted == step.text


HANDOFF_TURN = """dialogues:
  - id: test-wants-a-person
    tags: [handoff]
    turns:
      - user: I'd like to speak to a person about my order
      - handoff: customer asked for a person
"""


def test_tune_scores_candidates_with_the_reply_policy(tmp_path, tiny_base, cache_dir):
    """`bot tune` ranks the bot customers would get: its scoring hands a person request off by the
    persona's rule, as the server does (it used to score the raw model, which never hands off here)."""
    from bot.pipelines.tune import _score

    project = make_tiny_project(tmp_path, tiny_base, cache_dir, epochs=1, extra="eval:\n  max_new_tokens: 8\n")
    (project / "training_data" / "tests" / "examples.yml").write_text(HANDOFF_TURN)
    assert main(["-C", str(project), "train", "--force"]) == 0
    settings = settings_of(project)
    summary, _ = _score(settings, models.active_id(settings.models_dir), validate(settings), progress_bar=False)
    assert summary["handoff_accuracy"] == 1.0
