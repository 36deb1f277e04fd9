"""A real server process for tests that stop or kill it (SIGTERM, SIGKILL): `bot.serve.app.run`
with the scripted engine, which writes slowly enough to be caught mid-reply, or with the
project's own model (`--real-model`: model.base or the active trained model, the real loader
and engine, as `bot serve` runs it).

    python -m tests.server_process PROJECT PORT [--delay SECONDS] [--reply TEXT] [--real-model]

`ServerProcess` starts it and waits for /health; the process is the server itself (no shell
in between), so a signal sent to it reaches the server."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per generated token")
    parser.add_argument(
        "--reply", default="Thanks for waiting, I am looking into that for you right now, one moment please."
    )
    parser.add_argument(
        "--real-model", action="store_true", help="the project's model and engine instead of the scripted one"
    )
    args = parser.parse_args()

    from bot.base_model import load_tokenizer
    from bot.serve.app import run
    from bot.serve.shutdown import exit_now
    from tests.serve_support import scripted_model, settings_of

    settings = settings_of(args.project)
    if args.real_model:
        run(settings, "127.0.0.1", args.port)
    else:
        tokenizer = load_tokenizer("bundled", settings.cache_dir)

        def load():
            model = scripted_model(settings, tokenizer, lambda prompt: args.reply, delay=args.delay)
            model.engine.prompts = deque(maxlen=10)  # it runs for long (the soak): remember only the latest prompts
            return model

        run(settings, "127.0.0.1", args.port, load_model=load)
    exit_now(0)  # as `bot serve` ends


class ServerProcess:
    """`with ServerProcess(project, port) as server:` a server process answering on `server.url`."""

    def __init__(
        self,
        project: Path,
        port: int,
        *,
        delay: float = 0.05,
        reply: str | None = None,
        real_model: bool = False,
        env: dict | None = None,
    ):
        self.project, self.port, self.url = project, port, f"http://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "tests.server_process", str(project), str(port), "--delay", str(delay)]
        if reply is not None:
            self.command += ["--reply", reply]
        if real_model:
            self.command.append("--real-model")
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.process: subprocess.Popen | None = None

    def _launch(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.process = self._launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /health within {timeout} s: {self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far, all its threads, user and system (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15 of stat

    def output(self) -> str:
        """What the server wrote (once it has exited)."""
        if self.process is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
