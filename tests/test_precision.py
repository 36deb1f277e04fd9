"""One place decides the precision: training and serving ask bot.precision, so that the
gate scores the weights customers get."""

import torch

from bot import precision
from bot.engine import weights as engine_weights
from bot.training import recipe


def test_an_explicit_precision_is_kept():
    assert precision.choose_precision("fp32") == "fp32"
    assert precision.choose_precision("bf16", cuda=False) == "bf16"
    assert precision.runtime_dtype("fp32") is torch.float32
    assert precision.runtime_dtype("bf16") is torch.bfloat16


def test_auto_on_the_cpu_follows_the_bf16_hardware():
    expected = "bf16" if precision.native_cpu_bf16() else "fp32"
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


def test_training_and_serving_ask_the_same_function():
    assert recipe.choose_precision is precision.choose_precision
    assert engine_weights.runtime_dtype is precision.runtime_dtype
