"""Several brands on one base model (bot.engine.brands), with the tiny random model in fp32: the
base weights load once; a trained brand and an untrained one, answering at the same time on one
engine, reply exactly as each does served alone (its adapter merged in, or the base model with
its own prompt); a brand on another base model is refused, naming both."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from conftest import make_tiny_project
from serve_support import NO_ACTION_SERVER

from bot.config import load_settings
from bot.engine.brands import BrandMismatch, open_shared_base
from bot.engine.protocol import Finished
from bot.engine.response_model import load_response_model
from bot.pipelines.train import train_and_activate
from bot.serve.keys import HOLDER

FP32 = "  precision: fp32\n"  # appended to config.yml's train: section (serving's precision)


@pytest.fixture(scope="module")
def brands(tmp_path_factory, tiny_base, cache_dir) -> dict:
    kestrel = make_tiny_project(tmp_path_factory.mktemp("kestrel"), tiny_base, cache_dir)
    # trained in the precision every other test trains in (accelerate's state is one per process),
    # then served in fp32, where greedy replies compare exactly
    train_and_activate(load_settings(kestrel), progress_bar=False)
    (kestrel / "config.yml").write_text((kestrel / "config.yml").read_text() + FP32)
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
        pinned = [e for e in shared.engine.prompts.entries.values() if e.pinned]
        assert sorted(e.adapter for e in pinned) == [0, 1]  # each brand's system prompt, under its adapter
        together = await asyncio.gather(*(reply(served[name], q) for name in brands for q in questions))
    finally:
        await shared.engine.close()
    assert together == alone["kestrel"] + alone["lumen"]
    assert [name.split("#")[0] for name in shared.engine.adapters.indices] == [f"kestrel/{served['kestrel'].model_id}"]


def test_a_brand_on_another_base_model_is_refused_naming_both(brands, tmp_path, tiny_base, cache_dir):
    other_base = shutil.copytree(tiny_base, tmp_path / "other-base")
    solar = load_settings(make_tiny_project(tmp_path / "solar", other_base, cache_dir, extra=FP32))
    with pytest.raises(BrandMismatch) as refused:
        open_shared_base({"kestrel": brands["kestrel"], "solar": solar}, brands["kestrel"].build.serve)
    message = str(refused.value)
    assert "brand 'solar' runs on the base model" in message and str(other_base) in message
    assert "brand 'kestrel' on" in message and str(tiny_base) in message


async def test_each_brand_answers_under_its_prefix_with_its_own_store_and_token(brands, monkeypatch):
    from aiohttp.test_utils import TestClient, TestServer

    from bot.serve.brands import create_brands_app

    kestrel, lumen = brands["kestrel"], brands["lumen"]
    (kestrel.root / "endpoints.yml").write_text(f"{NO_ACTION_SERVER}brands:\n  kestrel: .\n  lumen: {lumen.root}\n")
    (lumen.root / "endpoints.yml").write_text(NO_ACTION_SERVER)
    settings = load_settings(kestrel.root)
    for variable, value in (("KESTREL", "k-token"), ("LUMEN", "l-token"), ("", "server-token")):
        monkeypatch.setenv("BOT_ADMIN_TOKEN" + (f"_{variable}" if variable else ""), value)
    client = TestClient(TestServer(create_brands_app(settings, settings.brand_folders())))
    await client.start_server()
    try:
        health = {p: await (await client.get(p + "/health")).json() for p in ("", "/b/lumen")}
        assert health[""]["model"]["id"] and health["/b/lumen"]["model"]["id"] is None
        for prefix in ("", "/b/lumen"):
            sent = await client.post(prefix + "/webhooks/rest/webhook", json={"sender": "same-id", "message": "hi"})
            assert sent.status == 200 and (await sent.json())[0]["text"]
        # the same sender under two brands: two conversations, each in its brand's own store
        for prefix in ("", "/b/lumen"):
            events = (await (await client.get(prefix + "/api/conversations/same-id")).json())["events"]
            assert [e["text"] for e in events if e["type"] == "user"] == ["hi"]

        def admin(token):
            return {"Authorization": f"Bearer {token}"}

        answers = {
            (prefix, token): (await client.get(prefix + "/api/handoffs", headers=admin(token))).status
            for prefix in ("", "/b/lumen")
            for token in ("k-token", "l-token", "server-token", "guess")
        }
        assert answers == {
            ("", "k-token"): 200,
            ("", "l-token"): 403,
            ("", "server-token"): 200,
            ("", "guess"): 401,
            ("/b/lumen", "k-token"): 403,
            ("/b/lumen", "l-token"): 200,
            ("/b/lumen", "server-token"): 200,
            ("/b/lumen", "guess"): 401,
        }
        # a brand's reload under load: its adapter loaded again beside the old one (unloaded once
        # the answers using it end); no request fails, in either brand, and lumen's replies stay
        reloaded = await client.post("/b/lumen/api/model/reload", headers=admin("l-token"))
        assert reloaded.status == 200
        questions = ["where is my parcel", "can I return a kettle?", "hello there", "my order is late"]

        async def ask(prefix: str, run: str) -> list[str]:
            async def one(k: int, question: str) -> str:
                body = {"sender": f"{run}-{k}", "message": question}
                response = await client.post(prefix + "/webhooks/rest/webhook", json=body)
                assert response.status == 200
                return " ".join(m.get("text") or "" for m in await response.json())

            return await asyncio.gather(*(one(k, q) for k, q in enumerate(questions)))

        lumen_before = await ask("/b/lumen", "before")
        reload = client.post("/api/model/reload", headers=admin("k-token"))
        *_, lumen_during, reloaded = await asyncio.gather(ask("", "during"), ask("/b/lumen", "during"), reload)
        assert lumen_during == lumen_before
        assert reloaded.status == 200 and (await reloaded.json())["model"]["id"] == health[""]["model"]["id"]
        sent = await client.post("/webhooks/rest/webhook", json={"sender": "after", "message": "hi"})
        assert sent.status == 200 and (await sent.json())[0]["text"]
        bank = client.app[HOLDER].current.engine.shared.adapters
        assert len(bank.indices) == 1 and bank.indices[client.app[HOLDER].current.engine.adapter] == 2

        # the OpenAI route at the root picks a brand by `model`, as vLLM picks an adapter
        async def completion(model: str) -> str:
            body = {"model": model, "messages": [{"role": "user", "content": "can I return a kettle?"}]}
            answer = await (await client.post("/v1/chat/completions", json=body)).json()
            return answer["choices"][0]["message"]["content"]

        by_name = {m: await completion(m) for m in ("lumen", "kestrel", "bot")}
        assert by_name["lumen"] == lumen_before[1] and by_name["kestrel"] == by_name["bot"] != by_name["lumen"]
        listed = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
        assert listed == [health[""]["model"]["id"], "kestrel", "lumen"]

        # every admin route of one brand refuses another brand's token, before it reads or changes anything
        document = await (await client.get("/openapi.json")).json()
        admin_routes = [
            (method, path.replace("{sender}", "same-id").replace("{model_id}", "x").replace("{name}", "x.yml"))
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
            if "security" in operation
        ]
        assert len(admin_routes) >= 15
        for prefix, token in (("/b/lumen", "k-token"), ("", "l-token")):
            for method, path in admin_routes:
                response = await client.request(method, prefix + path, headers=admin(token), json={})
                assert response.status == 403, (prefix, method, path)
        events = (await (await client.get("/b/lumen/api/conversations/same-id")).json())["events"]
        assert [e["type"] for e in events] == ["user", "bot"]  # no agent message, no resume, nothing

        # the brand list: every brand for the server-wide token, a brand's own token its brand alone
        async def listed_brands(prefix: str, token: str):
            response = await client.get(prefix + "/api/brands", headers=admin(token))
            if response.status != 200:
                return response.status
            return [(b["name"], b["prefix"]) for b in (await response.json())["brands"]]

        assert await listed_brands("", "server-token") == [("kestrel", ""), ("lumen", "/b/lumen")]
        assert await listed_brands("", "k-token") == [("kestrel", "")]
        assert await listed_brands("", "l-token") == 403
        assert await listed_brands("/b/lumen", "l-token") == [("lumen", "/b/lumen")]

        # the root's metrics are every brand's, labelled
        exposition = await (await client.get("/metrics")).text()
        tokens = [line for line in exposition.splitlines() if line.startswith("bot_generated_tokens_total")]
        assert sorted(line.split("{")[1].split("}")[0] for line in tokens) == ['brand="kestrel"', 'brand="lumen"']
        assert all(float(line.split()[-1]) > 0 for line in tokens)

        moved = await client.get("/b/kestrel/health?x=1", allow_redirects=False)
        assert moved.status == 308 and moved.headers["Location"] == "/health?x=1"
    finally:
        await client.close()


def test_two_brands_may_not_share_a_store(brands):
    from bot.serve.brands import BrandsMisconfigured, brand_settings

    kestrel, lumen = brands["kestrel"], brands["lumen"]
    (lumen.root / "endpoints.yml").write_text(
        f"{NO_ACTION_SERVER}tracker_store:\n  path: {kestrel.root / 'conversations.sqlite3'}\n"
    )
    with pytest.raises(BrandsMisconfigured, match="brands 'kestrel' and 'lumen' would store their conversations"):
        brand_settings(kestrel, {"kestrel": kestrel.root, "lumen": lumen.root})
    (lumen.root / "endpoints.yml").write_text(NO_ACTION_SERVER)


def test_every_brands_adapter_exported_for_one_vllm(brands, tmp_path, capsys):
    from bot.cli import main

    kestrel, lumen = brands["kestrel"], brands["lumen"]
    (kestrel.root / "endpoints.yml").write_text(f"{NO_ACTION_SERVER}brands:\n  kestrel: .\n  lumen: {lumen.root}\n")
    assert main(["-C", str(kestrel.root), "models", "export-brands", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "kestrel" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "lumen").exists()
    assert "lumen: no trained model; it is served by the base model" in printed
    assert f"--lora-modules kestrel={tmp_path / 'out' / 'kestrel'} --max-lora-rank 8" in printed
    assert "--served-model-name base" in printed


async def test_brands_on_a_model_server_name_their_adapters(brands, tmp_path):
    from aiohttp.test_utils import TestClient, TestServer
    from test_model_server_faults import FaultyModelServer, _free_port

    from bot.serve.brands import create_brands_app

    port = _free_port()
    kestrel, lumen = brands["kestrel"], brands["lumen"]
    remote = f"model_server:\n  url: http://127.0.0.1:{port}\n"
    (kestrel.root / "endpoints.yml").write_text(
        f"{NO_ACTION_SERVER}{remote}brands:\n  kestrel: .\n  lumen: {lumen.root}\n"
    )
    settings = load_settings(kestrel.root)
    server = FaultyModelServer(port)
    await server.start()
    client = TestClient(TestServer(create_brands_app(settings, settings.brand_folders())))
    await client.start_server()
    try:
        for prefix in ("", "/b/lumen"):
            sent = await client.post(prefix + "/webhooks/rest/webhook", json={"sender": "r", "message": "hello"})
            assert [m["text"] for m in await sent.json()] == [server.reply.strip()]
    finally:
        await client.close()
        await server.stop()
    assert [request["model"] for request in server.requests] == ["kestrel", "base"]
