"""The one place that decides the numeric precision: training, serving, `bot chat` and
evaluation all ask here, so that the gate scores the weights customers get."""

from __future__ import annotations

import torch


def choose_precision(requested: str = "auto", cuda: bool | None = None) -> str:
    """`requested` when it is "bf16" or "fp32". For "auto": bf16 on CUDA (when the GPU has it)
    and on a CPU whose oneDNN has bf16 kernels (AVX-512 BF16, AMX), fp32 otherwise. `cuda`
    defaults to whether a GPU is present."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() if cuda is None else cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def runtime_dtype(requested: str = "auto") -> torch.dtype:
    """The torch dtype of `choose_precision(requested)`."""
    return torch.bfloat16 if choose_precision(requested) == "bf16" else torch.float32
