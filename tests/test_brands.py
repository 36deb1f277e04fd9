"""Several brands on one base model (bot.engine.brands), with the tiny random model in fp32: the
base weights load once; a trained brand and an untrained one, answering at the same time on one
engine, reply exactly as each does served alone (its adapter merged in, or the base model with
its own prompt); a brand on another base model is refused, naming both."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from conftest import make_tiny_project

from bot.config import load_settings
from bot.engine.brands import BrandMismatch, open_shared_base
from bot.engine.protocol import Finished
from bot.engine.response_model import load_response_model
from bot.pipelines.train import train_and_activate

FP32 = "  precision: fp32\n"


@pytest.fixture(scope="module")
def brands(tmp_path_factory, tiny_base, cache_dir) -> dict:
    kestrel = make_tiny_project(tmp_path_factory.mktemp("kestrel"), tiny_base, cache_dir, extra=FP32)
    train_and_activate(load_settings(kestrel), progress_bar=False)
    lumen = make_tiny_project(tmp_path_factory.mktemp("lumen"), tiny_base, cache_dir, extra=FP32)
    persona = lumen / "training_data" / "persona.yml"
    persona.write_text(persona.read_text().replace("company: Example Shop", "company: Lumen Energy"))
    return {"kestrel": load_settings(kestrel), "lumen": load_settings(lumen)}


async def reply(model, text: str) -> list[int]:
    messages = [{"role": "system", "content": model.profile.system_prompt}, {"role": "user", "content": text}]
    async for item in model.stream(messages, 24):
        if isinstance(item, Finished):
            return list(item.token_ids)
    raise AssertionError("no Finished")


async def test_brands_on_one_base_reply_as_each_does_alone(brands):
    questions = ["Where is my order ES-1001?", "hi, can I return a kettle", "what's the delivery time"]
    alone = {}
    for name, settings in brands.items():
        model = load_response_model(settings)
        try:
            alone[name] = [await reply(model, q) for q in questions]
        finally:
            await model.close()
    assert alone["kestrel"] != alone["lumen"]  # the adapter and the prompt make a difference

    shared = open_shared_base(brands, brands["kestrel"].build.serve)
    try:
        served = {name: await asyncio.to_thread(shared.response_model, name, s) for name, s in brands.items()}
        assert served["kestrel"].model_id and served["lumen"].model_id is None
        assert "Lumen Energy" in served["lumen"].profile.system_prompt
        together = await asyncio.gather(*(reply(served[name], q) for name in brands for q in questions))
    finally:
        await shared.engine.close()
    assert together == alone["kestrel"] + alone["lumen"]
    assert shared.engine.adapters.indices == {f"kestrel/{served['kestrel'].model_id}": 1}


def test_a_brand_on_another_base_model_is_refused_naming_both(brands, tmp_path, tiny_base, cache_dir):
    other_base = shutil.copytree(tiny_base, tmp_path / "other-base")
    solar = load_settings(make_tiny_project(tmp_path / "solar", other_base, cache_dir, extra=FP32))
    with pytest.raises(BrandMismatch) as refused:
        open_shared_base({"kestrel": brands["kestrel"], "solar": solar}, brands["kestrel"].build.serve)
    message = str(refused.value)
    assert "brand 'solar' runs on the base model" in message and str(other_base) in message
    assert "brand 'kestrel' on" in message and str(tiny_base) in message
