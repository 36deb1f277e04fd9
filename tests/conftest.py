"""Shared fixtures. The real tokenizer of the bundled base model is cached under .cache/ so
only the first run of the suite pays for reading the GGUF file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_CACHE = ROOT / ".cache" / "test-models"

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def tokenizer(cache_dir):
    """The bundled SmolLM2-135M-Instruct tokenizer (real, not a stand-in)."""
    from bot.base_model import load_tokenizer

    return load_tokenizer("bundled", cache_dir)


def write_config(project: Path, cache_dir: Path, extra: str = "") -> None:
    """A config.yml pointing the project's model cache at the suite's cache."""
    (project / "config.yml").write_text(f"model:\n  cache_dir: {cache_dir}\n{extra}", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    """A tiny random-weight Llama with the real tokenizer, saved as a local model folder:
    unit tests train it in seconds, and it exercises the 'local folder' base model path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=1.0,  # large enough logits that a LoRA adapter can fit data (0.02 can't)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TINY_TRAIN = """
model:
  base: {base}
  max_length: 512
  cache_dir: {cache}
train:
  lora: {{rank: 8, alpha: 16, dropout: 0.0}}
  learning_rate: 5.0e-3
  warmup_ratio: 0.0
  epochs: {epochs}
  batch_size: 2
  checkpoint_every: 1
"""


def make_tiny_project(folder: Path, base: Path | str, cache_dir: Path, epochs: int = 4, extra: str = "") -> Path:
    """A project with the `bot init` example data, training the given base model."""
    import shutil

    shutil.copytree(ROOT / "bot" / "templates" / "project" / "training_data", folder / "training_data")
    (folder / "config.yml").write_text(TINY_TRAIN.format(base=base, cache=cache_dir, epochs=epochs) + extra)
    return folder


@pytest.fixture
async def serve(tokenizer):
    """serve(project, replies, ...) -> (client, model): an aiohttp test server around a
    scripted model (tests/serve_support.py); the admin token is serve_support.ADMIN_TOKEN."""
    from aiohttp.test_utils import TestClient, TestServer
    from serve_support import ADMIN_TOKEN, scripted_model, settings_of

    from bot.serve.app import create_app

    clients = []

    async def start(project, replies=(), *, delay=0.0, admin_token=ADMIN_TOKEN, loader=None):
        settings = settings_of(project)
        model = scripted_model(settings, tokenizer, replies, delay=delay)
        load_model = loader or (lambda: model)
        client = TestClient(TestServer(create_app(settings, load_model=load_model, admin_token=admin_token)))
        await client.start_server()
        clients.append(client)
        return client, model

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def browser():
    """Headless chromium (serve_support.CHROMIUM), driven by Playwright."""
    from playwright.async_api import async_playwright
    from serve_support import CHROMIUM

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        await browser.close()
