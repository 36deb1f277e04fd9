"""One way to load a model for generation, in one precision, for serving, `bot chat` and
evaluation alike, so that the gate scores the weights customers get.

A trained model loads the base model named in its own manifest, the tokenizer saved in its own
folder and its own profile: editing `model.base` in config.yml later never puts an adapter on
the wrong model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bot import models
from bot.base_model import load_model
from bot.config import ServeConfig, Settings
from bot.data.profile import BotProfile
from bot.engine.batch_engine import BatchingEngine
from bot.engine.constraint import ToolCallConstraint
from bot.engine.frontend import load_frontend
from bot.engine.kv import common_prefix
from bot.engine.protocol import Engine
from bot.engine.requests import leave_cores_to_engines
from bot.engine.serial import SerialEngine
from bot.precision import runtime_dtype

ENGINES = {"batching": BatchingEngine, "serial": SerialEngine}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Weights:
    model: object
    tokenizer: object
    profile: BotProfile
    trained: models.TrainedModel | None


def load_weights(
    settings: Settings, trained: models.TrainedModel | None, *, base_only: bool = False, dtype=None
) -> Weights:
    """`trained` with its adapter merged in (as fast as the base model), or the base model of
    config.yml when `trained` is None. `base_only`: the trained model's own base, no adapter
    (the evaluation's prompting baselines). In config.yml's `train.precision`, the one training
    used, unless `dtype` says otherwise. The calling thread's torch work stays on one core
    from here on (`leave_cores_to_engines`)."""
    dtype = dtype or runtime_dtype(settings.build.train.precision)
    leave_cores_to_engines()
    front = load_frontend(settings, trained)
    if trained is None or base_only:
        model = load_model(front.base, settings.cache_dir, dtype)
    else:
        model = models.load_merged(trained, front.base, settings.cache_dir, dtype)
    return Weights(model.eval().to(device()), front.tokenizer, front.profile, trained)


def shared_prefix(tokenizer, system_prompt: str) -> list[int]:
    """The tokens every conversation's prompt starts with: the rendered system prompt."""
    from bot.rendering import prompt_ids

    system = {"role": "system", "content": system_prompt}
    return common_prefix([prompt_ids(tokenizer, [system, {"role": "user", "content": text}]) for text in ("a", "b")])


def start_engine(
    weights: Weights, serve: ServeConfig, max_length: int, *, kind: str | None = None, ignore_eos: bool = False
) -> Engine:
    """The engine config.yml's `serve` section asks for (or `kind`), around loaded weights."""
    kind = kind or serve.engine
    batching = {"speculation": serve.speculates} if kind == "batching" else {}
    return ENGINES[kind](
        weights.model,
        weights.tokenizer,
        max_length=max_length,
        max_batch=serve.max_batch,
        max_queue=serve.max_queue,
        kv_cache_mb=serve.kv_cache_mb,
        pinned_prefix=shared_prefix(weights.tokenizer, weights.profile.system_prompt) if kind == "batching" else None,
        ignore_eos=ignore_eos,
        constraint=None if ignore_eos else call_constraint(weights.model, weights.tokenizer, weights.profile.actions),
        **batching,
    )


def call_constraint(model, tokenizer, actions) -> ToolCallConstraint:
    """The tool-call constraint for a model: its vocabulary is the width of its output layer."""
    return ToolCallConstraint(tokenizer, actions, model.get_output_embeddings().weight.shape[0])
