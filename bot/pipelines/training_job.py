"""Training from the server: `bot train` for the served project in a child process, one at a
time, followed through its progress file (`bot train --progress-file`, see
bot/training/progress_file.py) and its output (the last lines are kept for the operator).

The child trains, runs the evaluation gate and, if the new model passes it, makes it the active
model on disk, exactly as `bot train` in a terminal does. The running server goes on serving the
model it loaded: the job's `next_step` says how to serve the new one (a reload)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import bot
from bot.config import Settings
from bot.errors import BotError
from bot.training.progress_file import DONE, FAILED, STEP, ProgressReader

log = logging.getLogger("bot.serve")

LOG_LINES = 40  # lines of the child's output kept
LINE_CHARS = 2000  # a longer line is cut
CANCEL_GRACE_S = 10.0  # after SIGINT (training saves a checkpoint and stops), before SIGKILL
SHUTDOWN_GRACE_S = 1.0  # after SIGTERM when the server stops, before SIGKILL
RUNNING, SUCCEEDED, FAILED_STATE, CANCELLED = "running", "succeeded", "failed", "cancelled"


class JobRunning(BotError):
    """A training job is already running (one at a time)."""


class NoJobRunning(BotError):
    """There is no running training job to cancel."""


@dataclass
class TrainingJob:
    id: str
    started: float
    progress_file: Path
    state: str = RUNNING
    finished: float | None = None
    progress: dict | None = None
    model_id: str | None = None
    gate: dict | None = None
    activated: bool | None = None
    error: str | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    process: asyncio.subprocess.Process | None = None
    follower: asyncio.Task | None = None
    cancel_requested: bool = False

    def __post_init__(self):
        self.reader = ProgressReader(self.progress_file)

    def absorb(self) -> None:
        """Takes in what the child has written to its progress file since the last look."""
        for record in self.reader.read():
            event = record.get("event")
            if event == STEP:
                self.progress = {k: record.get(k) for k in ("step", "steps", "eta_s", "loss")}
            elif event == DONE:
                self.model_id = record.get("model_id")
                self.gate = record.get("gate")
                self.activated = record.get("activated")
            elif event == FAILED:
                self.error = record.get("error")

    def next_step(self) -> str | None:
        """What the operator does next, once the job has ended."""
        if self.state == SUCCEEDED and self.model_id:
            if self.activated:
                return (
                    f"{self.model_id} is now the active model on disk, "
                    "but this server still serves the model it loaded: "
                    "reload it (POST /api/model/reload, or activate it in the console's Models panel) "
                    "to serve the new one"
                )
            return (
                f"{self.model_id} did not pass the gate and was not activated; "
                "the active model stays as it was. To serve it "
                f"anyway, activate it in the console's Models panel (POST /api/models/{self.model_id}/activate)"
            )
        if self.state == FAILED_STATE:
            return "fix what the error names (e.g. with 'bot data validate') and train again"
        if self.state == CANCELLED:
            return "train again when ready; from a terminal, 'bot train --resume' continues from its checkpoint"
        return None

    def status(self) -> dict:
        """The JobStatus answer (bot/serve/routes/train.py)."""
        if self.state == RUNNING:
            self.absorb()
        return {
            "id": self.id,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "progress": self.progress,
            "model_id": self.model_id,
            "gate": self.gate,
            "log_tail": list(self.log),
            "error": self.error,
            "next_step": self.next_step(),
        }


class TrainingJobs:
    """Starts, follows and cancels the project's training job. `command` is the program run,
    before `-C PROJECT train --progress-file FILE` (default: this Python's `-m bot`)."""

    def __init__(self, settings: Settings, command: list[str] | None = None):
        self.root = settings.root
        self.progress_file = settings.build_dir / "train-progress.jsonl"
        self.command = command or [sys.executable, "-m", "bot"]
        self.current: TrainingJob | None = None

    def status(self) -> dict | None:
        return self.current.status() if self.current else None

    def arguments(self) -> list[str]:
        return [*self.command, "-C", str(self.root), "train", "--progress-file", str(self.progress_file)]

    @staticmethod
    def environment() -> dict[str, str]:
        """The server's environment, with output unbuffered and this server's own `bot` package
        first on the path (the child runs in the project's folder, where it may not be found)."""
        package_parent = str(Path(bot.__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}

    async def start(self) -> TrainingJob:
        if self.current and self.current.state == RUNNING:
            raise JobRunning(
                f"training job {self.current.id} is already running: cancel it first, or wait for it to end"
            )
        job = TrainingJob(uuid.uuid4().hex[:12], time.time(), self.progress_file)
        self.current = job  # before the first await: a second request meanwhile is refused
        self.progress_file.unlink(missing_ok=True)  # the child writes it anew; nothing of the last job is read
        try:
            job.process = await asyncio.create_subprocess_exec(
                *self.arguments(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.root,
                env=self.environment(),
                start_new_session=True,  # its own process group: a signal reaches anything it starts
            )
        except OSError as e:
            job.state, job.finished, job.error = FAILED_STATE, time.time(), f"could not start bot train: {e}"
            return job
        log.info("training job %s started: %s (pid %d)", job.id, " ".join(self.arguments()), job.process.pid)
        job.follower = asyncio.create_task(self._follow(job))
        return job

    async def _follow(self, job: TrainingJob) -> None:
        """Keeps the last lines of the child's output until it exits, then settles the job's state."""
        process, partial = job.process, b""
        while chunk := await process.stdout.read(65536):
            lines = (partial + chunk).replace(b"\r", b"\n").split(b"\n")
            partial = lines.pop()[-LINE_CHARS:]
            job.log.extend(line.decode("utf-8", "replace")[:LINE_CHARS] for line in lines if line.strip())
        if partial.strip():
            job.log.append(partial.decode("utf-8", "replace"))
        code = await process.wait()
        job.absorb()
        job.finished = time.time()
        if job.cancel_requested:
            job.state, job.error = CANCELLED, None  # its "interrupted" message stays in the log
        elif code == 0 and job.model_id:
            job.state = SUCCEEDED
        else:
            job.state = FAILED_STATE
            if not job.error:
                last = next((line.strip() for line in reversed(job.log) if line.strip()), "no output")
                if code:
                    job.error = f"bot train stopped with exit status {code}: {last}"
                else:
                    job.error = f"bot train reported no model: {last}"
        log.info("training job %s %s%s", job.id, job.state, f": {job.error}" if job.error else "")

    async def _stop(self, job: TrainingJob, first: int, grace_s: float) -> None:
        job.cancel_requested = True
        for sig, wait in ((first, grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(job.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass  # it has already ended
            try:
                await asyncio.wait_for(asyncio.shield(job.follower), wait)
                return
            except TimeoutError:
                continue

    async def cancel(self) -> TrainingJob:
        """Stops the running job (SIGINT: training saves a checkpoint and stops; SIGKILL if it
        has not ended within CANCEL_GRACE_S) and answers once the child has gone."""
        job = self.current
        if not job or job.state != RUNNING or job.process is None:
            raise NoJobRunning("no training job is running")
        log.info("training job %s: cancelling", job.id)
        await self._stop(job, signal.SIGINT, CANCEL_GRACE_S)
        return job

    async def close(self) -> None:
        """On server shutdown: a running child is terminated (SIGTERM, then SIGKILL)."""
        job = self.current
        if job and job.state == RUNNING and job.process is not None:
            log.info("training job %s: stopped with the server", job.id)
            await self._stop(job, signal.SIGTERM, SHUTDOWN_GRACE_S)
