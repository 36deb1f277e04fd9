"""Several brands' adapters in one batch, at the level of one forward pass: the bundled base model
with `--adapters` LoRA adapters (2) on the adapter bank (bot.engine.adapters), rows taking them in turn,
against the same model with one adapter merged into its weights (the baseline: what one brand
alone costs). Random adapters of the shape `bot train` makes (config.yml's rank, every linear
layer); no trained model is needed.

    .venv/bin/python benchmarks/multi_lora.py [--adapters 2] [--batch 16] [--context 400] [--passes 30]
                                              [--rounds 3]

Reported per round: milliseconds per decode pass (one new token for each of `--batch` rows after
`--context` cached tokens) and per prefill pass (`--prefill` tokens for one row), each setting
timed in turns in the same run, and the ratios adapters / merged (the time of the pass; serving
throughput is its inverse). The outputs of both settings for rows of the first adapter agree
(checked, in float32 for exactness).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from machine import machine  # noqa: E402

from bot.base_model import load_model  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.engine.adapters import AdapterBank  # noqa: E402
from bot.precision import runtime_dtype  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def random_adapter(settings, folder: Path, seed: int) -> Path:
    """A PEFT LoRA folder with random A and B, as `bot train` would shape it."""
    from peft import PeftModel

    from bot.training.recipe import add_lora

    torch.manual_seed(seed)
    model = add_lora(load_model(settings.base_model, settings.cache_dir), settings.build.train.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    assert isinstance(model, PeftModel)
    model.save_pretrained(folder)
    return folder


def merged(settings, adapter: Path, dtype) -> torch.nn.Module:
    """One brand alone, as the engine loads it (bot.models.load_merged): its adapter merged in."""
    from peft import PeftModel

    base = load_model(settings.base_model, settings.cache_dir, dtype)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()


def banked(settings, adapters: list[Path], dtype) -> tuple[torch.nn.Module, AdapterBank]:
    model = load_model(settings.base_model, settings.cache_dir, dtype).eval()
    bank = AdapterBank(model)
    for k, folder in enumerate(adapters):
        bank.load(f"brand{k}", folder)
    return model, bank


def decode_pass(model, batch: int, context: int):
    """A function that runs one decode pass: `batch` rows, one token each, `context` cached."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    ids = torch.randint(100, 20000, (batch, context))
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    step = torch.randint(100, 20000, (batch, 1))
    mask = torch.ones(batch, context + 1, dtype=torch.long)
    position = torch.full((batch, 1), context)

    def run():
        with torch.no_grad():
            out = model(input_ids=step, attention_mask=mask, position_ids=position, past_key_values=cache)
        cache.crop(-1)
        return out.logits

    return run


def prefill_pass(model, tokens: int):
    torch.manual_seed(1)
    ids = torch.randint(100, 20000, (1, tokens))

    def run():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    return run


def timed(run, passes: int) -> float:
    run()
    start = time.perf_counter()
    for _ in range(passes):
        run()
    return (time.perf_counter() - start) / passes * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=2, help="adapters on the bank, rows taking them in turn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--prefill", type=int, default=256)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    settings = load_settings(ROOT)
    dtype = runtime_dtype(settings.build.train.precision)
    print(f"{machine()}; {dtype}; batch {args.batch}, context {args.context}, prefill {args.prefill}")
    with tempfile.TemporaryDirectory() as folder:
        adapters = [random_adapter(settings, Path(folder) / f"a{k}", seed=k) for k in range(args.adapters)]

        # exactness first, in float32: rows of adapter 1 in the bank = the merged adapter 1
        exact_merged = merged(settings, adapters[0], torch.float32)
        exact_bank, bank = banked(settings, adapters, torch.float32)
        ids = torch.randint(100, 20000, (2, 12))
        bank.route([bank.index("brand0"), bank.index("brand1")])
        with torch.no_grad():
            mixed = exact_bank(input_ids=ids).logits
            alone = exact_merged(input_ids=ids[:1]).logits
        difference = (mixed[0] - alone[0]).abs().max().item()
        print(f"float32: the first adapter's row differs from the merged model's by at most {difference:.2e}")
        del exact_merged, exact_bank

        one = merged(settings, adapters[0], dtype)
        many, bank = banked(settings, adapters, dtype)
        rows = [bank.index(f"brand{k % args.adapters}") for k in range(args.batch)]
        kinds = {
            "decode": (decode_pass(one, args.batch, args.context), decode_pass(many, args.batch, args.context)),
            "prefill": (prefill_pass(one, args.prefill), prefill_pass(many, args.prefill)),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for k in range(args.rounds):
            for kind, (base_run, bank_run) in kinds.items():
                bank.route(rows if kind == "decode" else rows[:1])
                base_ms, bank_ms = timed(base_run, args.passes), timed(bank_run, args.passes)
                times.setdefault((kind, "merged"), []).append(base_ms)
                times.setdefault((kind, "adapters"), []).append(bank_ms)
                print(
                    f"round {k + 1} {kind:7}: merged {base_ms:7.1f} ms, {args.adapters} adapters {bank_ms:7.1f} ms "
                    f"({bank_ms / base_ms:.2f}x the time)"
                )
        for kind in kinds:
            base_ms = statistics.median(times[(kind, "merged")])
            bank_ms = statistics.median(times[(kind, "adapters")])
            print(
                f"{kind}: median merged {base_ms:.1f} ms, {args.adapters} adapters {bank_ms:.1f} ms a pass; "
                f"throughput ratio adapters / merged {base_ms / bank_ms:.2f}x"
            )


if __name__ == "__main__":
    main()
