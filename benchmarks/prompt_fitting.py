"""Fitting a long conversation into the model's context: the old search (render the whole suffix
again for every start: quadratic) against `bot.rendering.fitted_prompt_ids` (walk back once:
linear), on the same conversations, in the same run.

    .venv/bin/python benchmarks/prompt_fitting.py [--sizes 100,200,400,800,1600] [--large 5000,20000]

A conversation of n short messages (the starter persona's system prompt, then "question i" /
"answer i"), with the room `config.yml` leaves for the prompt (model.max_length less
serve.max_new_tokens). Both must give the same ids; the old one is only timed up to the
largest of --sizes, the new one also at --large. The first call of the new one reads the
tokenizer's vocabulary once (about 0.1 s, once per process): done before timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.base_model import load_tokenizer  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.data.profile import profile_of  # noqa: E402
from bot.data.project import validate  # noqa: E402
from bot.rendering import fitted_prompt_ids, prompt_ids  # noqa: E402

# The implementation fitted_prompt_ids replaced, kept in the tests as the reference it must match.
from tests.test_fitting import reference_fitted_prompt_ids as old_fitted_prompt_ids  # noqa: E402


def conversation(system_prompt: str, n: int) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}]
    for i in range(n):
        if i % 2 == 0:
            messages.append({"role": "user", "content": f"question {i}"})
        else:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return messages + [{"role": "user", "content": "and the latest one"}]


def timed(function, *args, repeat: int = 1) -> tuple[float, list[int]]:
    """The fastest of `repeat` runs (this machine is shared: the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--sizes", default="100,200,400,800,1600", help="message counts timed with both")
    parser.add_argument("--large", default="5000,20000", help="message counts timed with the new one only")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the new one per size (the fastest counts)")
    args = parser.parse_args()
    settings = load_settings(args.project)
    tokenizer = load_tokenizer(settings.base_model, settings.cache_dir)
    system_prompt = profile_of(validate(settings)).system_prompt
    budget = settings.build.model.max_length - settings.build.serve.max_new_tokens
    system_tokens = len(prompt_ids(tokenizer, [{"role": "system", "content": system_prompt}]))
    print(f"budget {budget:,} tokens; system prompt {system_tokens:,} tokens")
    # the first call reads the vocabulary once (~0.1 s)
    fitted_prompt_ids(tokenizer, conversation(system_prompt, 2), budget)
    print(f"{'messages':>9} {'old s':>9} {'new s':>9} {'old/new':>8} {'prompt tokens':>14}")
    for n in [int(x) for x in args.sizes.split(",") if x]:
        messages = conversation(system_prompt, n)
        old_s, old = timed(old_fitted_prompt_ids, tokenizer, messages, budget)
        new_s, new = timed(fitted_prompt_ids, tokenizer, messages, budget, repeat=args.repeat)
        assert new == old, f"different ids at {n} messages"
        print(f"{n:>9,} {old_s:>9.3f} {new_s:>9.4f} {old_s / new_s:>7.0f}x {len(new):>14,}")
    for n in [int(x) for x in args.large.split(",") if x]:
        new_s, new = timed(fitted_prompt_ids, tokenizer, conversation(system_prompt, n), budget, repeat=args.repeat)
        print(f"{n:>9,} {'-':>9} {new_s:>9.4f} {'':>8} {len(new):>14,}")


if __name__ == "__main__":
    main()
