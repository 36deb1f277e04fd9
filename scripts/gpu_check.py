"""`make gpu-check`: train the default model on the starter data with CUDA bf16, print
tokens/s, peak GPU memory and the final losses, and check that the saved adapter loads and
generates the same tokens as the model in memory. Meant to finish in a few minutes on one H100.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def greedy(model, tokenizer, messages, n=24):
    import torch

    from bot.rendering import prompt_ids

    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def main() -> int:
    import torch
    from peft import PeftModel

    from bot.base_model import load_model, load_tokenizer
    from bot.config import load_settings
    from bot.data.project import compile_data
    from bot.training.recipe import train

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a machine with a GPU")
        return 2
    project = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    shutil.copytree(ROOT / "training_data", project / "training_data")
    config = yaml.safe_load((ROOT / "config.yml").read_text())
    # Same data and epochs as on CPU; a GPU takes bigger micro-batches.
    config["train"].update(batch_size=8, gradient_accumulation=1, precision="bf16", models_dir=str(project / "models"))
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
    print(f"trained {t['steps']} steps, {t['tokens']:,} tokens in {t['seconds']:.1f} s: {t['tokens_per_second']:,.0f} tokens/s")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"final train loss {t['final_train_loss']:.3f}; held-out loss per epoch {t['held_out_loss']}")
    print(f"whole run including set-up: {seconds:.1f} s")

    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    reloaded = PeftModel.from_pretrained(load_model(settings.base_model, settings.cache_dir).cuda(), result.folder / "adapter").eval()
    from bot.data.compile import to_examples
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
