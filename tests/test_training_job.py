"""Training from the server (POST /api/train): a real `bot train` child process on the tiny
random-weight model, so each job takes seconds; progress, the gate's verdict, failures,
cancelling, and the child stopped with the server."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from conftest import make_tiny_project
from serve_support import ADMIN

from bot import models
from bot.config import load_settings
from bot.serve.routes.train import TRAINING

SAFETY_S = 300  # only so that a hung child fails the test instead of hanging the suite


@pytest.fixture
def project(tmp_path, tiny_base, cache_dir):
    return make_tiny_project(tmp_path / "bot", tiny_base, cache_dir, epochs=2)


@pytest.fixture
def long_project(tmp_path, tiny_base, cache_dir):
    """Trains for far longer than any test waits: it is cancelled or stopped with the server."""
    return make_tiny_project(tmp_path / "bot", tiny_base, cache_dir, epochs=1000)


async def job_of(client) -> dict | None:
    response = await client.get("/api/train", headers=ADMIN)
    assert response.status == 200
    return (await response.json())["job"]


async def until(client, done) -> tuple[dict, list[dict]]:
    """Polls GET /api/train until `done(job)`; returns that job and the progress seen before."""
    seen = []

    async def poll():
        while not done(job := await job_of(client)):
            if job["progress"]:
                seen.append(job["progress"])
            await asyncio.sleep(0.1)
        return job

    return await asyncio.wait_for(poll(), SAFETY_S), seen


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_job_trains_reports_progress_and_the_gates_verdict(project, serve):
    client, _ = await serve(project)
    assert await job_of(client) is None
    started = await client.post("/api/train", json={}, headers=ADMIN)
    assert started.status == 202
    job = (await started.json())["job"]
    assert job["state"] == "running" and job["finished"] is None and job["model_id"] is None

    again = await client.post("/api/train", json={}, headers=ADMIN)
    assert again.status == 409 and job["id"] in (await again.json())["error"]

    job, seen = await until(client, lambda j: j["state"] != "running")
    assert job["state"] == "succeeded", job
    assert job["finished"] >= job["started"] and job["error"] is None
    assert job["progress"]["steps"] > 0 and job["progress"]["step"] == job["progress"]["steps"]
    assert job["progress"]["eta_s"] == 0 and isinstance(job["progress"]["loss"], float)
    assert all(p["step"] <= job["progress"]["steps"] for p in seen)
    settings = load_settings(project)
    assert job["model_id"] in [m.id for m in models.trained_models(settings.models_dir)]
    assert job["gate"]["passed"] is True and "leaks" in job["gate"]["summary"]
    assert models.active_id(settings.models_dir) == job["model_id"]  # `bot train` activated it on disk
    assert "/api/model/reload" in job["next_step"]  # ... but the server serves it only after a reload
    assert any(line.startswith(f"trained {job['model_id']}") for line in job["log_tail"])
    assert (await client.post("/api/train/cancel", headers=ADMIN)).status == 409  # nothing runs now


async def test_a_broken_dialogue_file_fails_the_job_with_the_clis_message(project, serve):
    client, _ = await serve(project)
    (project / "training_data" / "dialogues" / "broken.yml").write_text("dialogues:\n  - id: x\n    turns: [\n")
    assert (await client.post("/api/train", json={}, headers=ADMIN)).status == 202
    job, _ = await until(client, lambda j: j["state"] != "running")
    assert job["state"] == "failed" and job["model_id"] is None and job["gate"] is None
    assert job["error"].startswith("training_data/dialogues/broken.yml:4:1: error: YAML syntax")
    assert "Traceback" not in job["error"] and not any("Traceback" in line for line in job["log_tail"])


# `bot` started with SIGINT ignored, as a shell starts a background job's children
IGNORING_SIGINT = [
    sys.executable,
    "-c",
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "sys.argv[0] = 'bot'; runpy.run_module('bot', run_name='__main__')",
]


async def test_cancel_stops_training_at_a_checkpoint_and_another_job_may_start(long_project, serve):
    client, _ = await serve(long_project)
    client.app[TRAINING].command = IGNORING_SIGINT  # `bot train --progress-file` still stops on SIGINT
    assert (await client.post("/api/train/cancel", headers=ADMIN)).status == 409
    assert (await client.post("/api/train", json={}, headers=ADMIN)).status == 202
    pid = client.app[TRAINING].current.process.pid
    await until(client, lambda j: j["progress"] and j["progress"]["step"] >= 1)  # training is under way

    cancelled = await client.post("/api/train/cancel", headers=ADMIN)
    assert cancelled.status == 200
    job = (await cancelled.json())["job"]
    assert job["state"] == "cancelled" and job["finished"] is not None and job["error"] is None
    assert gone(pid)
    # not killed
    assert any("training interrupted; checkpoint saved at step" in line for line in job["log_tail"]), job["log_tail"]
    assert (await job_of(client))["state"] == "cancelled"
    assert (await client.post("/api/train", json={}, headers=ADMIN)).status == 202  # one at a time, and none runs now
    await client.post("/api/train/cancel", headers=ADMIN)


async def test_the_child_is_stopped_with_the_server(long_project, serve):
    client, _ = await serve(long_project)
    assert (await client.post("/api/train", json={}, headers=ADMIN)).status == 202
    jobs = client.app[TRAINING]
    await until(client, lambda j: j["progress"] is not None)
    await client.close()  # the app's cleanup
    assert gone(jobs.current.process.pid) and jobs.current.state == "cancelled"


async def test_training_routes_need_the_admin_token(project, serve):
    closed, _ = await serve(project, admin_token="")
    response = await closed.post("/api/train", json={}, headers=ADMIN)
    assert response.status == 403 and "BOT_ADMIN_TOKEN" in (await response.json())["error"]
    client, _ = await serve(project)
    for method, path in [("POST", "/api/train"), ("GET", "/api/train"), ("POST", "/api/train/cancel")]:
        assert (await client.request(method, path, json={})).status == 401
    assert (
        await client.post("/api/train", json={}, headers={"Authorization": "Bearer wrong"})
    ).status == 401  # (a 5th in a row waits: 429)
    assert client.app[TRAINING].current is None  # nothing was started


async def test_the_body_must_be_an_empty_object(project, serve):
    client, _ = await serve(project)
    response = await client.post("/api/train", json={"epochs": 3}, headers=ADMIN)
    assert response.status == 400 and "epochs" in (await response.json())["error"]
    assert client.app[TRAINING].current is None
