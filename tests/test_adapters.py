"""Several LoRA adapters on one base model (bot.engine.adapters), with the tiny random model in
fp32: a batch that mixes rows of two adapters and of the base model gives every row exactly the
tokens PEFT's model of its own adapter generates alone, whatever joins the batch beside it; the
prompt cache never lends one adapter's KV to another; an adapter for another base model is
refused with the layer it doesn't fit."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import torch
from test_engine import alone

from bot.engine.adapter_engine import AdapterEngine
from bot.engine.adapters import AdapterBank, AdapterError
from bot.engine.batch_engine import BatchingEngine
from bot.engine.protocol import Decoding, EngineError, Finished
from bot.engine.serial import SerialEngine


@pytest.fixture(scope="module")
def tiny(tiny_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> dict:
    """Two random adapters of different ranks, one on every linear layer, one on two of them."""
    from peft import LoraConfig, get_peft_model

    folders = {}
    for name, rank, targets, seed in (
        ("kestrel", 4, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 1),
        ("lumen", 8, ["q_proj", "v_proj"], 2),
    ):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        peft_model = get_peft_model(copy.deepcopy(tiny), config)
        folders[name] = tmp_path_factory.mktemp(name)
        peft_model.save_pretrained(folders[name])
    return folders


def peft_alone(tiny, tokenizer, folder, prompt: list[int], n: int) -> list[int]:
    """PEFT's own model of one adapter, greedy `generate` for one prompt: the reference."""
    from peft import PeftModel

    model = tiny if folder is None else PeftModel.from_pretrained(copy.deepcopy(tiny), folder).eval()
    with torch.inference_mode():
        return alone(model, tokenizer, prompt, n)


def banked(tiny, adapters) -> tuple[torch.nn.Module, AdapterBank]:
    model = copy.deepcopy(tiny)
    bank = AdapterBank(model)
    for name, folder in adapters.items():
        bank.load(name, folder)
    return model, bank


async def tokens(engine, prompt, n, adapter, after=0.0) -> list[int]:
    await asyncio.sleep(after)
    async for item in engine.stream(prompt, n, Decoding(adapter=adapter)):
        if isinstance(item, Finished):
            return list(item.token_ids)
    raise AssertionError("no Finished")


def prompts_of(tokenizer, sizes) -> list[list[int]]:
    return [tokenizer(f"account {k}: " + "my bill looks wrong " * k)["input_ids"] for k in sizes]


@pytest.mark.parametrize("engine_class", [BatchingEngine, SerialEngine])
async def test_rows_of_different_adapters_get_the_tokens_of_their_own_adapter(tiny, tokenizer, adapters, engine_class):
    names = ["kestrel", "lumen", None, "lumen", "kestrel", None, "kestrel", "lumen"]
    prompts = prompts_of(tokenizer, (1, 9, 4, 30, 2, 14, 20, 5))
    model, bank = banked(tiny, adapters)
    engine = engine_class(model, tokenizer, max_length=1024, max_batch=3, prefill_tokens=128, adapters=bank)
    try:  # 8 requests, 3 rows: rows join and leave while others of another adapter decode
        got = await asyncio.gather(
            *(tokens(engine, p, 16, a, 0.003 * k) for k, (p, a) in enumerate(zip(prompts, names, strict=False)))
        )
    finally:
        await engine.close()
    folder = {None: None, **adapters}
    expected = [peft_alone(tiny, tokenizer, folder[a], p, 16) for p, a in zip(prompts, names, strict=True)]
    assert got == expected
    # the adapters change the reply: the test would notice rows getting each other's adapter
    assert len({tuple(peft_alone(tiny, tokenizer, folder[a], prompts[0], 16)) for a in folder}) == 3


async def test_the_prompt_cache_keeps_each_adapters_kv_apart(tiny, tokenizer, adapters):
    model, bank = banked(tiny, adapters)
    engine = BatchingEngine(model, tokenizer, max_length=1024, max_batch=4, adapters=bank)
    prompt = prompts_of(tokenizer, [12])[0]
    try:
        first = await tokens(engine, prompt, 12, "kestrel")
        second = await tokens(engine, prompt + first, 12, "lumen")  # kestrel's KV of this prefix is cached
        again = await tokens(engine, prompt + first, 12, "kestrel")
    finally:
        await engine.close()
    assert second == peft_alone(tiny, tokenizer, adapters["lumen"], prompt + first, 12)
    assert again == peft_alone(tiny, tokenizer, adapters["kestrel"], prompt + first, 12)
    assert engine.stats().prompt_cache_hits >= 1  # kestrel's second request reused its own prefix


async def test_reloading_an_adapter_under_load_changes_only_its_new_requests(tiny, tokenizer, adapters):
    """kestrel's model is replaced (by lumen's weights) while a kestrel reply and a lumen reply
    are being generated: both finish as they started, kestrel's cached prompt is not reused by
    its new adapter, and kestrel's requests from then on get the new adapter's tokens."""
    model, bank = banked(tiny, adapters)
    engine = BatchingEngine(model, tokenizer, max_length=1024, max_batch=4, adapters=bank)
    prompt = prompts_of(tokenizer, [6])[0]
    try:
        warm = await tokens(engine, prompt, 8, "kestrel")  # kestrel's KV for this prompt is cached
        running = [asyncio.create_task(tokens(engine, prompt + warm, 300, name)) for name in ("kestrel", "lumen")]
        await asyncio.sleep(0.05)
        slot = await engine.load_adapter("kestrel", adapters["lumen"])
        assert not any(task.done() for task in running)  # it loaded while both were generating
        after = await tokens(engine, prompt + warm, 300, "kestrel")
        started_before = await asyncio.gather(*running)
    finally:
        await engine.close()
    assert started_before[0] == peft_alone(tiny, tokenizer, adapters["kestrel"], prompt + warm, 300)
    assert started_before[1] == after == peft_alone(tiny, tokenizer, adapters["lumen"], prompt + warm, 300)
    assert len(started_before[0]) > 20
    assert slot == 3  # slots 1 and 2 were still in use when it loaded
    assert bank.indices == {"kestrel": 3, "lumen": 2}


async def test_an_unknown_adapter_or_another_base_models_adapter_is_refused(tiny, tokenizer, adapters, tmp_path):
    model, bank = banked(tiny, adapters)
    engine = BatchingEngine(model, tokenizer, max_length=1024, adapters=bank)
    try:
        with pytest.raises(EngineError, match="no adapter named 'solar'"):
            await tokens(engine, [1, 2, 3], 4, "solar")
    finally:
        await engine.close()
    plain = BatchingEngine(copy.deepcopy(tiny), tokenizer, max_length=1024)
    try:
        with pytest.raises(EngineError, match="serves one model"):
            await tokens(plain, [1, 2, 3], 4, "kestrel")
        with pytest.raises(EngineError, match="takes no adapters"):
            await plain.load_adapter("kestrel", adapters["kestrel"])
    finally:
        await plain.close()

    from safetensors.torch import load_file, save_file

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "adapter_config.json").write_text((adapters["lumen"] / "adapter_config.json").read_text())
    weights = load_file(adapters["lumen"] / "adapter_model.safetensors")
    weights = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k else v for k, v in weights.items()}
    save_file(weights, wrong / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"q_proj' has shape \(32, 32\).*trained on another base model"):
        bank.load("solar", wrong)
    with pytest.raises(AdapterError, match="not a LoRA adapter folder"):
        bank.load("solar", tmp_path)
    assert json.loads((adapters["lumen"] / "adapter_config.json").read_text())["r"] == 8


async def test_an_adapter_engine_serves_its_adapter_and_frees_its_slot_when_closed(tiny, tokenizer, adapters):
    """A brand's engine view: its requests get its adapter; closed while a reply is under way,
    the reply finishes with it, and the adapter that later takes its slot never reuses that
    reply's cached KV."""
    model, bank = banked(tiny, adapters)
    shared = BatchingEngine(model, tokenizer, max_length=1024, max_batch=4, adapters=bank)
    kestrel, base = AdapterEngine(shared, "kestrel", None), AdapterEngine(shared, None, None)
    prompt = prompts_of(tokenizer, [7])[0]
    try:
        assert await tokens(base, prompt, 12, None) == peft_alone(tiny, tokenizer, None, prompt, 12)
        running = asyncio.create_task(tokens(kestrel, prompt, 300, None))
        await asyncio.sleep(0.05)
        await kestrel.close()
        assert not running.done()
        reply = await running  # finished with kestrel's adapter; its KV went to the prompt cache
        with pytest.raises(EngineError, match="no adapter named 'kestrel'"):
            await tokens(kestrel, prompt, 4, None)
        slot = await shared.load_adapter("solar", adapters["lumen"])
        solar = await tokens(AdapterEngine(shared, "solar", None), prompt + reply, 12, None)
    finally:
        await shared.close()
    assert reply == peft_alone(tiny, tokenizer, adapters["kestrel"], prompt, 300)
    assert slot == bank.indices["solar"] == 1  # kestrel's slot, free again
    assert solar == peft_alone(tiny, tokenizer, adapters["lumen"], prompt + reply, 12)
