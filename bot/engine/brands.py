"""Several brands on one base model: each brand is a bot project (persona, actions, dialogues,
its own trained models); the base weights load once, each brand's active model adds only its
LoRA adapter beside them (bot.engine.adapters), and one batching engine serves every brand's
customers in the same forward passes. A brand with no trained model yet is served by the base
model with its own prompt.

Brands must share the base model: an adapter only fits the weights it was trained on. A brand
whose model was trained on another base model, or with another tokenizer, is refused, naming
both brands.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bot import models
from bot.base_model import load_model
from bot.config import ServeConfig, Settings
from bot.engine.adapter_engine import AdapterEngine
from bot.engine.adapters import AdapterBank
from bot.engine.batch_engine import BatchingEngine
from bot.engine.frontend import Frontend, load_frontend
from bot.engine.requests import leave_cores_to_engines
from bot.engine.response_model import ResponseModel
from bot.engine.weights import call_constraint, device, shared_prefix
from bot.errors import BotError
from bot.precision import runtime_dtype


class BrandMismatch(BotError):
    """A brand can't share the base model of the others."""


_loads = itertools.count(1)


def adapter_name(brand: str, trained: models.TrainedModel) -> str:
    """A brand's model as the adapter bank knows it, new at every load (a reload of the same
    model too): answers still running on the response model it replaces finish with theirs,
    and closing that one unloads its adapter, never the new one."""
    return f"{brand}/{trained.id}#{next(_loads)}"


def check_same_base(reference: tuple[str, Frontend], brand: str, front: Frontend) -> None:
    """BrandMismatch unless `brand`'s model runs on the reference brand's base model and tokenizer."""
    first, theirs = reference
    if front.base != theirs.base:
        raise BrandMismatch(
            f"brand {brand!r} runs on the base model {front.base}, brand {first!r} on {theirs.base}: "
            "brands on one server share one base model"
        )
    if front.tokenizer.get_vocab() != theirs.tokenizer.get_vocab():
        raise BrandMismatch(f"brand {brand!r} was trained with another tokenizer than brand {first!r}")


@dataclass
class SharedBase:
    """The base model loaded once, and the engine every brand's response model generates with."""

    base: str
    engine: BatchingEngine
    model: object
    reference: tuple[str, Frontend]  # the first brand: what every other must match

    def check(self, brand: str, front: Frontend) -> None:
        check_same_base(self.reference, brand, front)

    def response_model(self, brand: str, settings: Settings) -> ResponseModel:
        """`brand`'s active model (or its base model with its prompt) on the shared engine; its
        adapter is loaded between two decode steps, with no request failing. Blocks: call it in a
        thread, as every model loader is called."""
        leave_cores_to_engines()  # this loader thread's torch work on one core, as load_weights does
        front = load_frontend(settings, models.active(settings.models_dir))
        self.check(brand, front)
        name = None
        if front.trained:
            name = adapter_name(brand, front.trained)
            self.engine.load_adapter_waiting(name, front.trained.adapter_dir)
        self.engine.pin_waiting(shared_prefix(front.tokenizer, front.profile.system_prompt), name)
        constraint = call_constraint(self.model, front.tokenizer, front.profile.actions)
        engine = AdapterEngine(self.engine, name, constraint)
        trained_id = front.trained.id if front.trained else None
        return ResponseModel(engine, front.tokenizer, front.profile, trained_id, settings.build.model.max_length)


def open_shared_base(brands: dict[str, Settings], serve: ServeConfig) -> SharedBase:
    """The base model of the brands' active models (all the same, or BrandMismatch), loaded
    once, and a batching engine for it. The first brand's settings choose the precision and the
    context. Brands' response models come from `SharedBase.response_model`."""
    leave_cores_to_engines()
    fronts = {name: load_frontend(s, models.active(s.models_dir)) for name, s in brands.items()}
    first = next(iter(brands))
    settings = brands[first]
    front = fronts[first]
    for name, other in fronts.items():
        check_same_base((first, front), name, other)
    dtype = runtime_dtype(settings.build.train.precision)
    model = load_model(front.base, settings.cache_dir, dtype).eval().to(device())
    engine = BatchingEngine(
        model,
        front.tokenizer,
        max_length=settings.build.model.max_length,
        max_batch=serve.max_batch,
        max_queue=serve.max_queue,
        kv_cache_mb=serve.kv_cache_mb,
        adapters=AdapterBank(model),
        speculation=serve.speculates,
    )
    return SharedBase(front.base, engine, model, (first, front))
