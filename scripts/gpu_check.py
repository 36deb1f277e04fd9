"""`make gpu-check`: on one GPU, train the default model on the starter data with CUDA bf16
(tokens/s, peak GPU memory, losses), check that the saved adapter reloads and generates the same
tokens as the model in memory, evaluate the four modes on the held-out dialogues (seconds), and
run benchmarks/serve_load.py with 64 customers on the batching engine. Each figure is printed.
Meant to finish in under 8 minutes on one H100.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def greedy(model, tokenizer, messages, n=24) -> list[int]:
    """The reply's token ids from the batching engine (the one that serves customers)."""
    from bot.engine.batch_engine import BatchingEngine
    from bot.engine.protocol import Finished
    from bot.rendering import prompt_ids

    async def run() -> list[int]:
        engine = BatchingEngine(model, tokenizer, max_length=4096, max_batch=1)
        try:
            async for item in engine.stream(prompt_ids(tokenizer, messages), n):
                if isinstance(item, Finished):
                    return list(item.token_ids)
        finally:
            await engine.close()

    return asyncio.run(run())


def main() -> int:
    import torch
    from peft import PeftModel

    from bot.base_model import load_model, load_tokenizer
    from bot.config import config_mapping, load_settings
    from bot.data.project import compile_data
    from bot.training.recipe import train

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a machine with a GPU")
        return 2
    project = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    shutil.copytree(ROOT / "training_data", project / "training_data")
    config = config_mapping(ROOT)  # YAML 1.2, as the project reads it: `speculation: on` stays a word
    # Same data and epochs as on CPU; on a GPU, batches by a token budget (similar lengths
    # together, about 32 dialogues of 1,000 tokens a step) rather than a fixed row count.
    config["train"].update(tokens_per_batch=32768, precision="bf16", models_dir=str(project / "models"))
    config["model"]["cache_dir"] = str(project / "cache")
    (project / "config.yml").write_text(yaml.safe_dump(config))

    settings = load_settings(project)
    compiled, stats = compile_data(settings)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(settings, compiled.data_hash, progress_bar=True, report=print)
    seconds = time.perf_counter() - started
    t = result.manifest["training"]
    print(f"device: {torch.cuda.get_device_name()} ({t['device']}, {t['precision']})")
    print(
        f"trained {t['steps']} steps, {t['tokens']:,} tokens in {t['seconds']:.1f} s: "
        f"{t['tokens_per_second']:,.0f} tokens/s "
        f"(target: the starter data in at most 15 s: {'met' if t['seconds'] <= 15 else 'NOT met'})"
    )
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"final train loss {t['final_train_loss']:.3f}; held-out loss per epoch {t['held_out_loss']}")
    print(f"whole run including set-up: {seconds:.1f} s")

    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    reloaded = PeftModel.from_pretrained(
        load_model(settings.base_model, settings.cache_dir).cuda(), result.folder / "adapter"
    ).eval()
    from bot.data.compiler import to_examples
    from bot.data.project import validate

    data = validate(settings)
    messages = to_examples(data, data.test[:1])[0]["messages"][:2]
    in_memory = greedy(result.model.eval(), tokenizer, messages)
    from_disk = greedy(reloaded, tokenizer, messages)
    print(f"customer: {messages[1]['content']}")
    print(f"reply:    {tokenizer.decode(from_disk, skip_special_tokens=True)}")
    if in_memory != from_disk or not from_disk:
        print("FAIL: the reloaded adapter generates different tokens than the trained model")
        return 1
    print("ok: the saved adapter reloads on the GPU and generates the same tokens")

    from bot import models
    from bot.evaluation.run import evaluate

    models.activate(settings.models_dir, result.id)
    started = time.perf_counter()
    report, folder = evaluate(settings, model_id=result.id)
    print(f"bot eval, four modes: {time.perf_counter() - started:.1f} s in all; report in {folder}")
    for mode, summary in report["summary"].items():
        figures = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and k != "seconds"}
        print(f"  {mode:<11} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    bench = [
        sys.executable,
        str(ROOT / "benchmarks" / "serve_load.py"),
        "--project",
        str(project),
        "--customers",
        "64",
        "--engines",
        "batching",
    ]
    print("$ " + " ".join(bench[1:]), flush=True)
    return subprocess.call(bench, cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
