"""Trained models on disk: `models/<id>/` with the adapter, the tokenizer and chat template it
was trained with, and `manifest.json`; `models/ACTIVE` names the model the server loads.

`models/PREVIOUS` names the model that was active before the last change of ACTIVE (what a
roll back goes back to).

Ids are UTC timestamps (`20261126-171502`), so they sort by time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import atomic
from bot.errors import BotError

ACTIVE_FILE = "ACTIVE"
PREVIOUS_FILE = "PREVIOUS"
MANIFEST = "manifest.json"


class UnknownModel(BotError):
    """No trained model has that id."""


@dataclass(frozen=True)
class TrainedModel:
    id: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        return self.folder / "adapter"

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / "tokenizer"


def new_id(models_dir: Path) -> str:
    """A fresh time-sorted id; a suffix keeps two runs in one second apart."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidate, n = stamp, 1
    while (models_dir / candidate).exists():
        n += 1
        candidate = f"{stamp}-{n}"
    return candidate


def write_json(path: Path, value: Any) -> None:
    atomic.write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def trained_models(models_dir: Path) -> list[TrainedModel]:
    """Finished models (those with a manifest), oldest first."""
    found = []
    for folder in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        manifest = folder / MANIFEST
        if manifest.is_file():
            found.append(TrainedModel(folder.name, folder, json.loads(manifest.read_text(encoding="utf-8"))))
    return found


def get(models_dir: Path, model_id: str) -> TrainedModel:
    for model in trained_models(models_dir):
        if model.id == model_id:
            return model
    known = ", ".join(m.id for m in trained_models(models_dir)) or "none yet: run 'bot train'"
    raise UnknownModel(f"no trained model '{model_id}' in {models_dir} (known: {known})")


def _read_marker(models_dir: Path, name: str) -> str | None:
    marker = models_dir / name
    return marker.read_text(encoding="utf-8").strip() or None if marker.is_file() else None


def active_id(models_dir: Path) -> str | None:
    return _read_marker(models_dir, ACTIVE_FILE)


def active(models_dir: Path) -> TrainedModel | None:
    model_id = active_id(models_dir)
    return get(models_dir, model_id) if model_id else None


def previous_id(models_dir: Path) -> str | None:
    """The model that was active before the last activation of another one, if any."""
    return _read_marker(models_dir, PREVIOUS_FILE)


def write_marker(models_dir: Path, name: str, model_id: str) -> None:
    atomic.write_text(models_dir / name, model_id + "\n")


def restore_markers(models_dir: Path, active: str | None, previous: str | None) -> None:
    """ACTIVE and PREVIOUS as they were (active_id and previous_id read before a change that failed)."""
    for name, model_id in ((ACTIVE_FILE, active), (PREVIOUS_FILE, previous)):
        if model_id:
            write_marker(models_dir, name, model_id)
        else:
            (models_dir / name).unlink(missing_ok=True)


def activate(models_dir: Path, model_id: str) -> TrainedModel:
    """Make `model_id` the one the server loads (an atomic rename: readers never see half a file);
    the one it replaces is remembered as the previous model."""
    model = get(models_dir, model_id)
    current = active_id(models_dir)
    if current and current != model_id:
        write_marker(models_dir, PREVIOUS_FILE, current)
    write_marker(models_dir, ACTIVE_FILE, model_id)
    return model


def matching(models_dir: Path, data_hash: str, base: str) -> list[TrainedModel]:
    """Models trained on exactly this compiled data and base model."""
    wanted = {"data_hash": data_hash, "base_model": base}
    return [m for m in trained_models(models_dir) if all(m.manifest.get(k) == v for k, v in wanted.items())]


def load_merged(model: TrainedModel, base: str, cache_dir: Path, dtype=None):
    """The base model with the adapter merged in, ready for inference: as fast as the base model."""
    from peft import PeftModel

    from bot.base_model import load_model

    return PeftModel.from_pretrained(load_model(base, cache_dir, dtype), model.adapter_dir).merge_and_unload().eval()
