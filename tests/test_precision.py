"""One place decides the precision: training and serving ask bot.precision, so that the
gate scores the weights customers get."""

import torch

from bot import precision
from bot.engine import loader
from bot.training import recipe


def test_an_explicit_precision_is_kept():
    assert precision.choose_precision("fp32") == "fp32"
    assert precision.choose_precision("bf16", cuda=False) == "bf16"
    assert precision.runtime_dtype("fp32") is torch.float32
    assert precision.runtime_dtype("bf16") is torch.bfloat16


def test_auto_on_the_cpu_follows_the_bf16_kernels():
    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert precision.choose_precision("auto", cuda=False) == expected
    if not torch.cuda.is_available():
        assert precision.runtime_dtype() is (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_training_and_serving_ask_the_same_function():
    assert recipe.choose_precision is precision.choose_precision
    assert loader.runtime_dtype is precision.runtime_dtype
