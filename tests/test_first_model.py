"""`bot serve --train-if-needed` (what `make run` runs) on a project with no trained model: the
base model answers at once, prompted few-shot and described as such in /health, while a real
`bot train` child trains the tiny random-weight model in the background; once it passes the gate
it is swapped in with no request failing. A project whose model matches its data trains nothing."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import make_tiny_project
from serve_support import ADMIN, ADMIN_TOKEN

from bot import models
from bot.config import load_settings
from bot.data.project import validate
from bot.evaluation.cases import example_dialogues
from bot.pipelines.first_model import FINE_TUNING
from bot.serve.app import create_app
from bot.serve.keys import HOLDER
from bot.serve.routes.train import TRAINING

SAFETY_S = 300  # only so that a hung child fails the test instead of hanging the suite


@pytest.fixture
def project(tmp_path, tiny_base, cache_dir):
    """The tiny project with room in its context for example dialogues in the few-shot prompt."""
    folder = make_tiny_project(tmp_path / "bot", tiny_base, cache_dir, epochs=2)
    config = folder / "config.yml"
    config.write_text(config.read_text().replace("max_length: 512", "max_length: 1024"))
    return folder


async def started(project, *, command=None) -> TestClient:
    app = create_app(load_settings(project), admin_token=ADMIN_TOKEN, train_if_needed=True)
    if command:
        app[TRAINING].command = command
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def health(client) -> dict:
    response = await client.get("/health")
    assert response.status == 200
    return (await response.json())["model"]


async def chat(client, sender: str) -> int:
    response = await client.post("/webhooks/rest/webhook", json={"sender": sender, "message": "hello"})
    await response.read()
    return response.status


async def until(check) -> None:
    async def poll():
        while not await check():
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), SAFETY_S)


async def test_the_base_model_answers_while_the_first_model_trains_then_it_takes_over(project):
    client = await started(project)
    try:
        first = await health(client)
        assert first["trained"] is False and first["id"] is None
        assert first["description"] == FINE_TUNING
        # Few-shot: the example dialogues are in the prompt the base model answers with.
        settings = load_settings(project)
        interim = client.app[HOLDER].current
        shown = example_dialogues(validate(settings), settings.build.eval.few_shot_k)
        prompt = interim.profile.system_prompt
        assert "Example conversation 1:" in prompt and shown[0].turns[0].user in prompt
        assert await chat(client, "early") == 200
        answered, served_by = time.time(), client.app[HOLDER].current

        job = (await (await client.get("/api/train", headers=ADMIN)).json())["job"]
        # The job had started, and its model (trained, then gated) was not yet in: the base answered.
        assert job is not None and job["started"] < answered and served_by is interim

        statuses = []

        async def swapped() -> bool:
            statuses.append(await chat(client, f"during-{len(statuses)}"))  # customers keep chatting
            return (await health(client))["trained"]

        await until(swapped)
        assert set(statuses) == {200}
        served = await health(client)
        assert served["id"] == models.active_id(settings.models_dir) is not None
        assert served["description"] == f"trained model {served['id']}"
        job = (await (await client.get("/api/train", headers=ADMIN)).json())["job"]
        assert job["state"] == "succeeded" and job["model_id"] == served["id"]
    finally:
        await client.close()

    again = await started(project)  # the model now matches the data: served at once, nothing trains
    try:
        model = await health(again)
        assert model["trained"] is True and model["id"] == served["id"]
        assert (await (await again.get("/api/train", headers=ADMIN)).json())["job"] is None
    finally:
        await again.close()


async def test_when_training_fails_the_base_model_stays_and_says_so(project):
    failing = [sys.executable, "-c", "import sys; print('out of disk space'); sys.exit(3)"]
    client = await started(project, command=failing)
    try:

        async def settled() -> bool:
            return (await health(client))["description"] != FINE_TUNING

        await until(settled)
        model = await health(client)
        assert model["trained"] is False
        assert model["description"] == "base (fine-tuning failed: see the console's Train panel)"
        job = (await (await client.get("/api/train", headers=ADMIN)).json())["job"]
        assert job["state"] == "failed" and "out of disk space" in job["error"]
        assert await chat(client, "after") == 200
    finally:
        await client.close()
