"""`bot models export`: a trained model in the forms inference servers load.

- `export_adapter`: the LoRA adapter as a PEFT folder (`adapter_config.json`,
  `adapter_model.safetensors`) with the tokenizer it was trained with. vLLM serves it on top of
  the base model: `--model BASE --enable-lora --lora-modules ID=DIR`, and so does
  `peft.PeftModel.from_pretrained(base, DIR)`.
- `export_merged`: the adapter merged into the base weights, a plain Hugging Face folder.

The adapter's `base_model_name_or_path` names the base that vLLM's `--model` must serve, as it
is on this machine: a Hugging Face id (portable), or the absolute path of a local folder (the
converted bundled base in the model cache, or the folder `model.base` names). vLLM reads the
base only from `--model`; on another machine copy that folder too and pass its new path.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bot import atomic
from bot.base_model import model_folder
from bot.config import BUNDLED_BASE
from bot.errors import BaseModelUnavailable, BotError
from bot.models import TrainedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
VLLM_SERVER = ("python", "-m", "vllm.entrypoints.openai.api_server")


class ExportTargetNotEmpty(BotError):
    """The export folder already holds something: an export never overwrites."""


class IncompleteModel(BotError):
    """A trained model's folder lacks what an export needs (its adapter or tokenizer)."""


class AdapterNotServable(BotError):
    """The adapter uses a feature vLLM can't serve."""


@dataclass(frozen=True)
class AdapterExport:
    model_id: str
    folder: Path  # the PEFT folder, with the tokenizer
    base: str  # what vLLM's --model serves: a folder on this machine or a Hugging Face id
    rank: int

    @property
    def max_lora_rank(self) -> int:
        """The smallest value of vLLM's `--max-lora-rank` that fits this adapter."""
        return next(r for r in VLLM_MAX_LORA_RANKS if r >= self.rank)

    def vllm_command(self) -> list[str]:
        """vLLM's OpenAI server for this adapter; requests name it by the model id."""
        return [
            *VLLM_SERVER,
            "--model",
            self.base,
            "--tokenizer",
            str(self.folder),
            "--enable-lora",
            "--lora-modules",
            f"{self.model_id}={self.folder}",
            "--max-lora-rank",
            str(self.max_lora_rank),
        ]


class BrandsOnDifferentBases(BotError):
    """Brands whose models were trained on different base models can't share one vLLM."""


@dataclass(frozen=True)
class BrandsExport:
    adapters: dict[str, AdapterExport]  # by brand
    untrained: list[str]  # brands with no trained model: served by the base model


def export_brands(brands: dict, target: Path) -> BrandsExport:
    """Every brand's active adapter (brands: name -> Settings) in `target`/NAME, for one vLLM
    serving them all; BrandsOnDifferentBases, before anything is written, when they can't share it."""
    from bot import models

    chosen, bases, untrained = {}, {}, []
    for name, settings in brands.items():
        model = models.active(settings.models_dir)
        if model is None:
            untrained.append(name)
            continue
        chosen[name] = (model, settings)
        bases[name] = settings.resolve_base(model.manifest["base_model"])
    if len(set(bases.values())) > 1:
        trained_on = ", ".join(f"{name} on {base}" for name, base in bases.items())
        raise BrandsOnDifferentBases(f"the brands' models were trained on different base models ({trained_on})")
    adapters = {
        name: export_adapter(model, bases[name], settings.cache_dir, target / name)
        for name, (model, settings) in chosen.items()
    }
    return BrandsExport(adapters, untrained)


def brands_vllm_command(exports: dict[str, AdapterExport]) -> list[str]:
    """One vLLM server for several brands' adapters on their shared base: each adapter answers
    to its brand's name (`--lora-modules NAME=DIR ...`), the base model to `base`."""
    first = next(iter(exports.values()))
    modules = [f"{name}={done.folder}" for name, done in exports.items()]
    rank = max(done.max_lora_rank for done in exports.values())
    return [
        *VLLM_SERVER,
        "--model",
        first.base,
        "--served-model-name",
        "base",
        "--tokenizer",
        str(first.folder),
        "--enable-lora",
        "--lora-modules",
        *modules,
        "--max-lora-rank",
        str(rank),
        "--max-loras",
        str(len(exports)),
    ]


def merged_vllm_command(model_id: str, folder: Path) -> list[str]:
    """vLLM's OpenAI server for a merged export, answering to the model id."""
    return [*VLLM_SERVER, "--model", str(folder), "--served-model-name", model_id]


def vllm_base(base: str, cache_dir: Path) -> str:
    """The base model as vLLM's `--model` takes it: the bundled GGUF's converted Hugging Face
    folder (made now if it isn't cached yet), a local folder's absolute path, or a Hugging Face id."""
    if base == BUNDLED_BASE:
        return model_folder(base, cache_dir)
    if Path(base).expanduser().is_dir():
        return str(Path(base).expanduser().resolve())
    if base.startswith(("/", ".", "~")) or base.count("/") > 1:
        raise BaseModelUnavailable(f"the base model folder '{base}' this model was trained on is not on this machine")
    return base


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ExportTargetNotEmpty(f"{target} is a file: name a new folder to export to")
    if target.is_dir() and any(target.iterdir()):
        raise ExportTargetNotEmpty(f"{target} is not empty: name a new (or empty) folder to export to")


def adapter_config(model: TrainedModel) -> dict:
    """The adapter's PEFT config; IncompleteModel when the model folder has no adapter."""
    config_file, weights = model.adapter_dir / ADAPTER_CONFIG, model.adapter_dir / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        missing = config_file if not config_file.is_file() else weights
        raise IncompleteModel(f"model {model.id} has no adapter: {missing} is missing (train it again)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncompleteModel(f"{config_file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise IncompleteModel(f"{config_file} is not a PEFT config (a JSON object)")
    return config


def check_servable(model_id: str, config: dict) -> None:
    """AdapterNotServable unless vLLM can serve an adapter with this PEFT config."""
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if not config.get(key):
            problems.append(f"{key} is missing")
    if isinstance(config.get("r"), int) and config["r"] > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"rank {config['r']} is above vLLM's largest --max-lora-rank, {VLLM_MAX_LORA_RANKS[-1]}")
    if config.get("modules_to_save"):
        problems.append("modules_to_save is set (vLLM serves LoRA weights only)")
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}, not 'none'")
    if problems:
        raise AdapterNotServable(f"vLLM can't serve the adapter of model {model_id}: " + "; ".join(problems))


def _tokenizer_files(model: TrainedModel) -> list[Path]:
    files = [f for f in sorted(model.tokenizer_dir.glob("*")) if f.is_file()] if model.tokenizer_dir.is_dir() else []
    if not any(f.name == "tokenizer_config.json" for f in files):
        raise IncompleteModel(
            f"model {model.id} has no tokenizer: {model.tokenizer_dir / 'tokenizer_config.json'} is missing"
        )
    return files


def _write_folder(target: Path, write) -> None:
    """Fill a new folder beside `target`, then rename it into place: an export that fails
    leaves nothing half-written."""
    if not atomic.write_folder(target, write):  # something was written there meanwhile
        raise ExportTargetNotEmpty(f"{target} is not empty: name a new (or empty) folder to export to")


def export_adapter(model: TrainedModel, base: str, cache_dir: Path, target: Path) -> AdapterExport:
    """The model's LoRA adapter as a PEFT folder vLLM loads with `--lora-modules`, with the
    tokenizer it was trained with (for vLLM's `--tokenizer`); `base` is the base it was trained on."""
    _check_target(target)
    config = adapter_config(model)
    check_servable(model.id, config)
    tokenizer_files = _tokenizer_files(model)
    served_base = vllm_base(base, cache_dir)
    config["base_model_name_or_path"] = served_base

    def write(folder: Path) -> None:
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.copyfile(model.adapter_dir / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS)
        for file in tokenizer_files:
            shutil.copyfile(file, folder / file.name)

    _write_folder(target, write)
    return AdapterExport(model.id, target.resolve(), served_base, int(config["r"]))


def export_merged(model: TrainedModel, base: str, cache_dir: Path, target: Path) -> Path:
    """The adapter merged into the base weights, saved as a plain Hugging Face folder."""
    from transformers import AutoTokenizer

    from bot.models import load_merged

    _check_target(target)
    adapter_config(model)
    _tokenizer_files(model)
    merged = load_merged(model, base, cache_dir)

    def write(folder: Path) -> None:
        merged.save_pretrained(folder)
        AutoTokenizer.from_pretrained(model.tokenizer_dir).save_pretrained(folder)

    _write_folder(target, write)
    return target.resolve()
