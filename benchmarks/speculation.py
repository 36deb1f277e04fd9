"""What prompt-lookup speculation gives: tokens/s of the batching engine with `serve.speculation`
on and off, on the same held-out prompts, in the same run, rounds interleaved.

    .venv/bin/python benchmarks/speculation.py [--batches 1,16] [--rounds 2] [--prompts 32] [--project .]

The prompts are the held-out turns (each as its context up to that turn), the ones answered in
words first; with the tool-call constraint, as served. Uses the project's active model (the base
model when none is trained), greedy decoding. Batch 1 is one customer alone (the prompts one
after another); batch 16 is 16 customers at once. Printed per batch and setting: tokens/s,
forward passes, tokens per pass, the guesses (and how many of them the tool-call grammar forced)
and the share kept; then the ratio on / off and
whether every reply is the same token for token (it must be: speculation keeps only what greedy
decoding picks; in bfloat16 a pass over several columns may round differently from one column
at a time, so run with --fp32 for the exact check). Targets: one customer at least 2x, 16
customers at least 1.15x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine_run import engine_run  # noqa: E402
from machine import machine  # noqa: E402

from bot import models  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.data.project import validate  # noqa: E402
from bot.engine.weights import call_constraint, load_weights  # noqa: E402
from bot.evaluation.cases import cases  # noqa: E402
from bot.rendering import prompt_ids  # noqa: E402


async def run(weights, constraint, prompts, batch: int, max_new_tokens: int, speculation: bool):
    """(seconds, the replies' token ids, what the engine counted) for every prompt, `batch` at a time."""
    done = await engine_run(
        weights, prompts, batch=batch, max_new_tokens=max_new_tokens, constraint=constraint, speculation=speculation
    )
    names = ("decode_steps", "drafted_tokens", "accepted_tokens", "forced_tokens", "generated_tokens")
    return done.seconds, [r.token_ids for r in done.results], {name: done.counted(name) for name in names}


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".")
    parser.add_argument("--batches", default="1,16", help="rows decoded at once, one run each")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32, help="held-out turns used (the first, in file order)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--fp32", action="store_true", help="float32 weights: replies must then be identical token for token"
    )
    args = parser.parse_args()

    settings = load_settings(Path(args.project))
    data = validate(settings)
    weights = load_weights(settings, models.active(settings.models_dir), dtype=torch.float32 if args.fp32 else None)
    constraint = call_constraint(weights.model, weights.tokenizer, weights.profile.actions)
    held_out = cases(data)
    worded = [c for c in held_out if not c.reference_step.action] + [c for c in held_out if c.reference_step.action]
    prompts = [prompt_ids(weights.tokenizer, c.context) for c in worded[: args.prompts]]
    device = machine()
    model_name = weights.trained.id if weights.trained else "base"
    print(
        f"model: {model_name} ({next(weights.model.parameters()).dtype}); {device}; {len(prompts)} held-out prompts; "
        f"{args.rounds} rounds"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        rates: dict[bool, list[float]] = {False: [], True: []}
        replies: dict[bool, list] = {}
        for k in range(args.rounds):
            for speculation in (False, True):
                seconds, tokens, counts = asyncio.run(
                    run(weights, constraint, prompts, batch, args.max_new_tokens, speculation)
                )
                replies[speculation] = tokens
                generated = sum(len(t) for t in tokens)
                rates[speculation].append(generated / seconds)
                steps = counts["decode_steps"]
                per_pass = (counts["generated_tokens"] - len(prompts)) / max(steps, 1)  # the first: prefill's
                kept = counts["accepted_tokens"] / max(counts["drafted_tokens"], 1)
                label = "on " if speculation else "off"
                print(
                    f"batch {batch:>2} round {k + 1} speculation {label} {generated / seconds:7.1f} tokens/s "
                    f"({generated} tokens in {seconds:.1f} s; {steps} passes, {per_pass:.2f} tokens a pass; "
                    f"guesses {counts['drafted_tokens']} ({counts['forced_tokens']} forced by the call grammar), "
                    f"kept {kept:.0%})"
                )
        same = sum(a == b for a, b in zip(replies[False], replies[True], strict=True))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(
            f"batch {batch}: median tokens/s off {off:.1f}, on {on:.1f}; ratio on / off {on / off:.2f}x; "
            f"identical replies {same}/{len(prompts)}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
