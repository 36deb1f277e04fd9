"""The console's models routes on a real trained model (the tiny random-weight base, trained in
seconds) and the real loader: the figures come from the report `bot train`'s gate wrote, and
activating a model loads its weights and swaps the engine the server answers with."""

from __future__ import annotations

import json
import shutil

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import make_tiny_project
from serve_support import ADMIN, ADMIN_TOKEN

from bot import models
from bot.config import load_settings
from bot.pipelines.train import train_and_activate
from bot.serve.app import create_app

COPY = "20990101-000000"  # a second model: the trained one's folder under a later id


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, cache_dir):
    project = make_tiny_project(tmp_path_factory.mktemp("console-models"), tiny_base, cache_dir, epochs=1)
    settings = load_settings(project)
    model = train_and_activate(settings, progress_bar=False).model
    shutil.copytree(model.folder, settings.models_dir / COPY)
    manifest = dict(model.manifest, id=COPY)
    models.write_json(settings.models_dir / COPY / models.MANIFEST, manifest)
    return settings, model


async def test_a_trained_model_is_listed_with_its_report_and_activating_another_serves_it(trained):
    settings, model = trained
    models.activate(settings.models_dir, model.id)
    # the real loader: the active model's weights
    client = TestClient(TestServer(create_app(settings, admin_token=ADMIN_TOKEN)))
    await client.start_server()
    try:
        assert (await (await client.get("/health")).json())["model"]["id"] == model.id
        listed = {m["id"]: m for m in (await (await client.get("/api/models", headers=ADMIN)).json())["models"]}
        assert set(listed) == {model.id, COPY} and listed[model.id]["active"] and listed[model.id]["report"]
        report = json.loads((settings.results_dir / model.id / "report.json").read_text())
        assert listed[model.id]["metrics"] == report["summary"]["fine-tuned"]
        assert listed[model.id]["gate"] == model.manifest["activation"]
        assert await (await client.get(f"/api/models/{model.id}/report", headers=ADMIN)).json() == report
        assert (await client.get(f"/api/models/{COPY}/report", headers=ADMIN)).status == 404  # no report under its id

        response = await client.post(f"/api/models/{COPY}/activate", headers=ADMIN)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert (body["model"]["id"], body["previous"]["id"]) == (COPY, model.id)
        health = await (await client.get("/health")).json()
        assert health["model"]["id"] == COPY and health["model"]["trained"] is True
        answer = await client.post(
            "/webhooks/rest/webhook", json={"sender": "after-swap", "message": "Where is my order ES-1001?"}
        )
        assert answer.status == 200 and isinstance((await answer.json())[0]["text"], str)
        assert (models.active_id(settings.models_dir), models.previous_id(settings.models_dir)) == (COPY, model.id)
    finally:
        await client.close()
