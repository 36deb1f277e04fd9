"""The one place that decides the numeric precision: training, serving, `bot chat` and
evaluation all ask here, so that the gate scores the weights customers get."""

from __future__ import annotations

import torch


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX). oneDNN also reports bf16
    kernels on plain AVX-512 (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`), but there they are
    emulated and slow: training the starter LoRA in bf16 ran at 54 tokens/s on a 2-core Intel Xeon
    without either."""
    checks = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    if all(check is None for check in checks):  # an older torch: fall back to what oneDNN says
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(bool(check()) for check in checks if check is not None)


def choose_precision(requested: str = "auto", cuda: bool | None = None) -> str:
    """`requested` when it is "bf16" or "fp32". For "auto": bf16 on CUDA (when the GPU has it)
    and on a CPU with bf16 in hardware (`native_cpu_bf16`), fp32 otherwise. `cuda` defaults to
    whether a GPU is present."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() if cuda is None else cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_cpu_bf16() else "fp32"


def runtime_dtype(requested: str = "auto") -> torch.dtype:
    """The torch dtype of `choose_precision(requested)`."""
    return torch.bfloat16 if choose_precision(requested) == "bf16" else torch.float32
