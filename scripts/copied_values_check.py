"""Does copying grounded values change the bot's steps where the model would have written a value
the conversation holds anyway? Every held-out turn's first step (fine-tuned mode, greedy, the
reply policy `bot eval` runs), twice: as the bot runs (grounded values copied from the
conversation) and with the copying switched off (values written freely, checked after). Prints
how many steps are the same and each one that differs.

    .venv/bin/python scripts/copied_values_check.py [--project .] [--model ID]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(ROOT))
    parser.add_argument("--model", help="a trained model's id (default: the active one)")
    args = parser.parse_args()

    from bot import models
    from bot.config import load_settings
    from bot.data.project import validate
    from bot.engine.weights import load_weights
    from bot.evaluation.cases import cases, prompted
    from bot.evaluation.generation import policy_replies
    from bot.policy import reply

    settings = load_settings(args.project)
    cfg = settings.build.eval
    trained = models.get(settings.models_dir, args.model) if args.model else models.active(settings.models_dir)
    if trained is None:
        print("no trained model: run 'bot train' first", file=sys.stderr)
        return 1
    data = validate(settings)
    weights = load_weights(settings, trained)
    budget = settings.build.model.max_length - cfg.max_new_tokens

    def steps() -> list:
        items = [prompted(c, "fine-tuned", data, weights.tokenizer, cfg.few_shot_k, budget) for c in cases(data)]
        policy_replies(
            weights, items, serve=settings.build.serve, max_batch=cfg.batch_size, max_new_tokens=cfg.max_new_tokens
        )
        return items

    started = time.monotonic()
    copied = steps()
    offered = reply.grounded_values
    reply.grounded_values = lambda actions, sources: ()  # the constraint as it was: no values offered
    try:
        free = steps()
    finally:
        reply.grounded_values = offered
    differ = [(a, b) for a, b in zip(copied, free, strict=True) if a.reply.text != b.reply.text]
    calls = sum(1 for a in copied if a.reply.action)
    print(
        f"model {trained.id}: {len(copied) - len(differ)} of {len(copied)} held-out steps the same "
        f"({calls} of them calls), {len(differ)} differ; {time.monotonic() - started:.0f} s"
    )
    for a, b in differ:
        print(f"\n{a.case.dialogue.id} turn {a.case.turn}:\n  copied: {a.reply.text}\n  free:   {b.reply.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
