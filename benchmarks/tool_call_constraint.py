"""What the tool-call constraint costs: tokens/s of the batching engine with it and without it,
on the same prompts, in the same run, rounds interleaved.

    .venv/bin/python benchmarks/tool_call_constraint.py [--rounds 3] [--batch 16] [--project .]

The prompts are the held-out turns whose answer is a tool call (an action or a handoff), each
as its context up to that turn, so most replies are calls and most tokens are generated under
the constraint. Uses the project's active model (the base model when none is trained). Greedy
decoding: where the model already writes a valid call, both engines write the same tokens.
Target: the constraint costs at most 10% of the unconstrained tokens/s. The time the decode
thread spends computing masks is also printed: it is added to the steps serially, so it bounds
the cost from above, without the run-to-run noise of this shared machine.
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

from bot import models  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.data.project import validate  # noqa: E402
from bot.engine.weights import call_constraint, load_weights  # noqa: E402
from bot.evaluation.cases import cases  # noqa: E402
from bot.rendering import parse_reply, prompt_ids  # noqa: E402


async def run(
    weights, prompts: list[list[int]], batch: int, max_new_tokens: int, constrained: bool
) -> tuple[float, int, int, int]:
    """(seconds, tokens, replies that are well-formed calls, broken calls) for every prompt at once."""
    constraint = call_constraint(weights.model, weights.tokenizer, weights.profile.actions) if constrained else None
    done = await engine_run(weights, prompts, batch=batch, max_new_tokens=max_new_tokens, constraint=constraint)
    seconds, results = done.seconds, done.results
    steps = [parse_reply(r.text) for r in results]
    if constraint:
        print(
            f"  constraint: {constraint.masks} token masks, "
            f"{1000 * constraint.mask_seconds / max(constraint.masks, 1):.2f} ms each, "
            f"{constraint.mask_seconds:.2f} s in all = "
            f"{100 * constraint.mask_seconds / seconds:.1f}% of the run's wall time"
        )
    tokens = sum(len(r.token_ids) for r in results)
    calls = sum(s.action is not None for s in steps)
    broken = sum(s.broken_call is not None for s in steps)
    return seconds, tokens, calls, broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    settings = load_settings(Path(args.project))
    data = validate(settings)
    weights = load_weights(settings, models.active(settings.models_dir))
    calls = [c for c in cases(data) if c.reference_step.action]
    prompts = [prompt_ids(weights.tokenizer, c.context) for c in calls]
    model_name = weights.trained.id if weights.trained else "base"
    print(
        f"model: {model_name}; {len(prompts)} held-out turns answered by a call; "
        f"batch {args.batch}; {args.rounds} rounds"
    )
    rates: dict[bool, list[float]] = {False: [], True: []}
    for k in range(args.rounds):
        for constrained in (False, True):
            seconds, tokens, good, broken = asyncio.run(
                run(weights, prompts, args.batch, args.max_new_tokens, constrained)
            )
            rates[constrained].append(tokens / seconds)
            label = "constrained  " if constrained else "unconstrained"
            print(
                f"round {k + 1} {label} {tokens / seconds:7.1f} tokens/s  ({tokens} tokens in {seconds:.1f} s; "
                f"{good} calls, {broken} broken)"
            )
    free, bound = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"\nmedian tokens/s: unconstrained {free:.1f}, constrained {bound:.1f}; ratio {bound / free:.3f} "
        f"(cost {100 * (1 - bound / free):.1f}%; target at most 10%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
