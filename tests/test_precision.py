"""One place decides the precision: training and serving ask bot.precision, so that the
gate scores the weights customers get."""

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_project

from bot import precision
from bot.config import load_settings
from bot.engine.weights import load_weights


def test_an_explicit_precision_is_kept():
    assert precision.choose_precision("fp32") == "fp32"
    assert precision.choose_precision("bf16", cuda=False) == "bf16"
    assert precision.runtime_dtype("fp32") is torch.float32
    assert precision.runtime_dtype("bf16") is torch.bfloat16


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them: an oracle independent of torch."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux")
def test_auto_on_the_cpu_follows_the_bf16_hardware():
    flags = _cpu_flags()
    expected = "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"
    assert precision.choose_precision("auto", cuda=False) == expected
    if not torch.cuda.is_available():
        assert precision.runtime_dtype() is (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_emulated_bf16_on_plain_avx512_is_not_chosen(monkeypatch):
    # oneDNN says "bf16" on any AVX-512 CPU; without AVX-512 BF16 or AMX it is emulated and slow.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert precision.choose_precision("auto", cuda=False) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert precision.choose_precision("auto", cuda=False) == "bf16"


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_the_weights_served_and_scored_have_the_precision_training_used(requested, tmp_path, tiny_base, cache_dir):
    """The gate scores what customers get: evaluation, `bot chat` and the server load the model
    in config.yml's train.precision, the one the recipe trains in, whatever this CPU prefers."""
    project = make_tiny_project(tmp_path, tiny_base, cache_dir, extra=f"  precision: {requested}\n")
    settings = load_settings(project)
    assert settings.build.train.precision == requested
    loaded = load_weights(settings, None)
    assert loaded.model.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[requested]
