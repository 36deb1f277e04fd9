"""Operator routes (admin token): train the served project's model in a child process, follow it,
cancel it. bot/pipelines/training_job.py runs the job; a trained model is not served until the
operator reloads (see JobStatus.next_step), except the first model of `bot serve
--train-if-needed`, which is swapped in as soon as it passes the gate (`train_first_model`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.pipelines.first_model import stage_after
from bot.pipelines.training_job import SUCCEEDED, JobRunning, NoJobRunning, TrainingJobs
from bot.serve.bodies import read_body
from bot.serve.keys import HOLDER, RELOAD_LOCK, SETTINGS
from bot.serve.openapi import RouteTable
from bot.serve.routes.admin import swap_in_active_model

log = logging.getLogger("bot.serve")

TRAINING = web.AppKey("training", TrainingJobs)
routes = RouteTable("operator", admin=True)


class TrainRequest(BaseModel):
    """No options yet: it trains with the project's config.yml."""

    model_config = ConfigDict(extra="forbid")


class JobProgress(BaseModel):
    step: int = Field(description="Optimizer steps done.")
    steps: int = Field(description="Optimizer steps in all.")
    eta_s: float | None = Field(description="Estimated seconds of training left (null before the first step).")
    loss: float | None = Field(description="The smoothed training loss (null before the first step).")


class GateVerdict(BaseModel):
    passed: bool = Field(
        description="Whether the new model passed the evaluation gate (and so became the active model on disk)."
    )
    summary: str


class JobStatus(BaseModel):
    id: str
    state: Literal["running", "succeeded", "failed", "cancelled"]
    started: float = Field(description="Unix time.")
    finished: float | None
    progress: JobProgress | None = Field(description="Null until the child has loaded the model and data.")
    model_id: str | None = Field(description="The model trained, once it is saved.")
    gate: GateVerdict | None
    log_tail: list[str] = Field(description="The last lines of `bot train`'s output.")
    error: str | None = Field(description="Why it failed: `bot train`'s own message.")
    next_step: str | None = Field(
        None, description="What the operator does next, once the job has ended (e.g. reload to serve the new model)."
    )


class JobAnswer(BaseModel):
    job: JobStatus | None


@routes.post("/api/train", body=TrainRequest, ok=JobAnswer, ok_status=202, errors=(409,))
async def start_training(request: web.Request) -> web.Response:
    """Train a new model for this project in the background

    Starts `bot train` for this project in a child process (one job at a time: 409 while one runs).
    The new model becomes the active model on disk if it passes the gate; this server serves it
    after a reload (POST /api/model/reload)."""
    await read_body(request, TrainRequest)
    try:
        job = await request.app[TRAINING].start()
    except JobRunning as e:
        raise web.HTTPConflict(text=str(e)) from None
    return web.json_response({"job": job.status()}, status=202)


@routes.get("/api/train", ok=JobAnswer)
async def training_status(request: web.Request) -> web.Response:
    """The running or last training job

    The running training job, or the last one (null when none has run since the server started)."""
    return web.json_response({"job": request.app[TRAINING].status()})


@routes.post("/api/train/cancel", ok=JobAnswer, errors=(409,))
async def cancel_training(request: web.Request) -> web.Response:
    """Cancel the running training job

    Stops the running training job and answers once its process has ended (409 if none runs)."""
    try:
        job = await request.app[TRAINING].cancel()
    except NoJobRunning as e:
        raise web.HTTPConflict(text=str(e)) from None
    return web.json_response({"job": job.status()})


async def _stop_on_cleanup(app: web.Application) -> None:
    await app[TRAINING].close()


def add_training_jobs(app: web.Application) -> None:
    """The app's training jobs (TRAINING), stopped when it cleans up."""
    app[TRAINING] = TrainingJobs(app[SETTINGS])
    app.on_cleanup.append(_stop_on_cleanup)


async def train_first_model(app: web.Application) -> None:
    """The first model of `bot serve --train-if-needed`: trains it as POST /api/train does (the
    console's Train panel follows and can cancel the job), then, if it passed the gate, swaps it
    in through the reload (no request fails). Otherwise the base model stays, and says why."""
    interim = app[HOLDER].current
    job = await app[TRAINING].start()
    if job.follower:
        await asyncio.shield(job.follower)  # when the server stops, TrainingJobs.close stops the child
    if job.state == SUCCEEDED and job.activated:
        async with app[RELOAD_LOCK]:
            if app[HOLDER].current is interim:  # an operator may have swapped in a model meanwhile
                await swap_in_active_model(app)
        return
    if app[HOLDER].current is interim:
        interim.stage = stage_after(job.state)
    log.warning("the first model was not swapped in (%s): %s", job.state, job.error or job.next_step())
