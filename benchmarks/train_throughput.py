"""Useful (non-padding) training tokens per second of `bot train`'s batches against a naive
baseline, in the same run, on the same dialogues, model and settings. Three arms, each in its own
process so that peak memory is its own:

- naive: random order, each batch padded to its longest, the loss as transformers computes it
  (`model(**batch).loss`: the output layer at every position);
- random + bot-token loss: the same batches, with `bot train`'s loss (the output layer only
  where a bot token is predicted), to isolate what the batching alone buys;
- bot train: length-grouped batches and the bot-token loss.

    .venv/bin/python benchmarks/train_throughput.py [--examples 32] [--batch-size 4]

Prints each arm's throughput, padding fraction and peak memory, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_arm(arm: str, examples: int, batch_size: int) -> dict:
    """One arm: train on the same sample of dialogues for one pass, timed."""
    import torch
    from accelerate.utils import set_seed

    from bot.base_model import load_model, load_tokenizer
    from bot.config import load_settings
    from bot.precision import choose_precision
    from bot.training.batching import LengthGroupedBatches, RandomBatches, collate, padding_fraction
    from bot.training.loss import bot_token_loss
    from bot.training.recipe import add_lora, load_examples

    settings = load_settings(ROOT)
    cfg = settings.build.train
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    data = load_examples(settings.build_dir / "train.jsonl", tokenizer, settings.build.model.max_length)
    shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    sample = [data[i] for i in shuffled[:examples].tolist()]
    lengths = [len(e) for e in sample]
    sampler_class = LengthGroupedBatches if arm == "grouped" else RandomBatches
    naive_loss = arm == "naive"
    batches = list(sampler_class(lengths, batch_size, cfg.seed))

    model = load_model(settings.base_model, settings.cache_dir)
    model.config.use_cache = False
    model = add_lora(model, cfg.lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    bf16 = choose_precision(cfg.precision, cuda=False) == "bf16"
    useful = 0
    start = time.perf_counter()
    for indices in batches:
        batch = collate([sample[i] for i in indices], tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss if naive_loss else bot_token_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        useful += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return {
        "arm": arm,
        "useful_tokens": useful,
        "seconds": seconds,
        "tokens_per_second": useful / seconds,
        "padding": padding_fraction(lengths, batches),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "precision": "bf16" if bf16 else "fp32",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="dialogues in the timed sample (same for both arms)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--arm", choices=["naive", "random", "grouped"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # child process: one arm, result as JSON on the last line
        print(json.dumps(run_arm(args.arm, args.examples, args.batch_size)))
        return

    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "bot"), "-C", str(ROOT), "data", "compile"], check=True, capture_output=True
    )
    results = {}
    for arm in ("naive", "random", "grouped"):
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--arm",
                arm,
                "--examples",
                str(args.examples),
                "--batch-size",
                str(args.batch_size),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    print(
        f"{args.examples} starter dialogues, batch size {args.batch_size}, "
        f"{results['grouped']['precision']}, one pass each"
    )
    print(f"{'arm':<32}{'useful tok/s':>14}{'padding':>10}{'seconds':>10}{'peak RSS MB':>13}")
    labels = {
        "naive": "naive (random, padded, HF loss)",
        "random": "random + bot-token loss",
        "grouped": "bot train (grouped + bot loss)",
    }
    for arm, label in labels.items():
        r = results[arm]
        print(
            f"{label:<32}{r['tokens_per_second']:>14.0f}{r['padding']:>10.1%}"
            f"{r['seconds']:>10.1f}{r['peak_rss_mb']:>13.0f}"
        )
    speed = {arm: r["tokens_per_second"] for arm, r in results.items()}
    print(f"ratio bot train / naive: {speed['grouped'] / speed['naive']:.2f}x  (target: at least 1.5x)")
    print(f"  of which batching alone (grouped / random, same loss): {speed['grouped'] / speed['random']:.2f}x")
    print(f"  and the bot-token loss alone (random batches): {speed['random'] / speed['naive']:.2f}x")


if __name__ == "__main__":
    main()
