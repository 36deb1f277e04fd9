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
