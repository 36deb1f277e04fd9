"""Several LoRA adapters on one base model, each row of a batch with its own: the base weights
load once, and one forward pass serves rows of different fine-tunes together.

Each adapted linear layer keeps the base layer and, stacked, every adapter's A and B matrices
(index 0 is "no adapter": zeros, for a row served by the base model alone). For a batch, the
adapters' A matrices are applied to every row side by side and each row keeps the columns of
its own, then the B matrices likewise: two dense matmuls whatever the mix of adapters (punica's
aim, Chen et al., "Punica: Multi-Tenant LoRA Serving", 2023, which gathers each row's matrices on
a GPU; on a CPU that gather cost more than the matmuls). A row's output is

    base(x) + scale * (x @ A.T) @ B.T

with its own adapter's A, B and scale (PEFT's `lora_alpha / r`), which is what PEFT computes for
that adapter alone. Adapters of different ranks are padded with zeros to the largest rank, which
adds nothing.

Adapters come from PEFT folders (`adapter_config.json`, `adapter_model.safetensors`), as
`bot train` writes them; one that names a layer the base model lacks, or a shape it doesn't
have, is refused with an AdapterError that says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from bot.errors import BotError

BASE = 0  # the adapter index of a row served by the base model alone
_PREFIX = "base_model.model."  # PEFT's key prefix in adapter_model.safetensors


class AdapterError(BotError):
    """An adapter that can't be put on this base model."""


class Routing:
    """Which adapter each row of the next forward pass uses: set by the engine before each pass."""

    def __init__(self):
        self.rows: torch.Tensor | None = None  # [batch] adapter indices; None: the base model for all
        self.only: int | None = None  # the one adapter every row uses, when they all use the same
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def set(self, indices: Sequence[int], device: torch.device) -> None:
        self.rows = torch.tensor(list(indices), dtype=torch.long, device=device) if any(indices) else None
        self.only = indices[0] if self.rows is not None and len(set(indices)) == 1 else None
        self._masks = {}

    def mask(self, slots: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """[batch, slots * rank]: 1 in the columns of each row's own adapter, 0 elsewhere (made
        once per pass for each shape of layer)."""
        key = (slots, rank)
        if key not in self._masks:
            columns = torch.arange(slots * rank, device=self.rows.device) // rank
            self._masks[key] = (columns[None, :] == self.rows[:, None]).to(dtype)
        return self._masks[key]


class MultiLoraLinear(nn.Module):
    """A base linear layer plus every adapter's low-rank update, chosen per row by `routing`."""

    def __init__(self, base: nn.Linear, routing: Routing):
        super().__init__()
        self.base, self.routing = base, routing
        w = base.weight
        self.register_buffer("a", torch.zeros(1, 0, w.shape[1], dtype=w.dtype, device=w.device), persistent=False)
        self.register_buffer("b", torch.zeros(1, w.shape[0], 0, dtype=w.dtype, device=w.device), persistent=False)
        self._side_by_side()

    def put(self, index: int, a: torch.Tensor | None, b: torch.Tensor | None, scale: float) -> None:
        """Adapter `index`'s matrices ([r, in] and [out, r]; None: it leaves this layer alone),
        the scale folded into B."""
        rank = max(self.a.shape[1], a.shape[0] if a is not None else 0)
        count = max(self.a.shape[0], index + 1)
        grown_a = self.a.new_zeros(count, rank, self.a.shape[2])
        grown_b = self.b.new_zeros(count, self.b.shape[1], rank)
        grown_a[: self.a.shape[0], : self.a.shape[1]] = self.a
        grown_b[: self.b.shape[0], :, : self.b.shape[2]] = self.b
        grown_a[index].zero_()
        grown_b[index].zero_()
        if a is not None:
            grown_a[index, : a.shape[0]] = a.to(self.a.dtype)
            grown_b[index, :, : b.shape[1]] = (b.float() * scale).to(self.b.dtype)
        self.a, self.b = grown_a, grown_b
        self._side_by_side()

    def _side_by_side(self) -> None:
        """Every slot's A as the rows of one matrix, every B as the columns of one: column
        slot * rank + k of `a_cat.T` and of `b_cat` belong to slot `slot`."""
        slots, rank, inputs, outputs = self.a.shape[0], self.a.shape[1], self.a.shape[2], self.b.shape[1]
        self.a_cat = self.a.reshape(slots * rank, inputs).T.contiguous()  # [in, slots * rank]
        self.b_cat = self.b.permute(0, 2, 1).reshape(slots * rank, outputs).contiguous()  # [slots * rank, out]
        # each slot's own, for a pass whose rows all use one adapter (a prefill, one brand's batch)
        self.a_own = self.a.transpose(1, 2).contiguous()  # [slots, in, rank]
        self.b_own = self.b.transpose(1, 2).contiguous()  # [slots, rank, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every adapter's A applied to every row at once (their ranks side by side, one matmul),
        the columns of other rows' adapters zeroed, then every B at once: two dense matmuls of
        slots x rank columns. Gathering each row's own matrices instead (a batched matmul per
        row) copies them once per row and layer, which on a CPU cost more than the matmuls. When
        every row uses the same adapter, only its own A and B: a third of the work with three slots."""
        y = self.base(x)
        rows = self.routing.rows
        slots, rank = self.a.shape[0], self.a.shape[1]
        if rows is None or rank == 0:
            return y
        if (only := self.routing.only) is not None:
            down = x.reshape(-1, x.shape[-1]) @ self.a_own[only]
            return torch.addmm(y.reshape(-1, y.shape[-1]), down, self.b_own[only]).view(y.shape)
        batch = x.shape[0]
        down = x.reshape(-1, x.shape[-1]) @ self.a_cat  # one 2-D matmul: [batch * tokens, slots * rank]
        down = (down.view(batch, -1, slots * rank) * self.routing.mask(slots, rank, down.dtype)[:, None, :]).view(
            -1, slots * rank
        )
        return torch.addmm(y.reshape(-1, y.shape[-1]), down, self.b_cat).view(y.shape)


class AdapterBank:
    """The adapters loaded on one base model, by name, each in a slot of every adapted layer.
    Loading an adapter under a name already loaded puts it in a free slot and points the name
    there, so requests that started with the old one finish with it; its slot is free again once
    no request uses it (`live`). Only between forward passes: the engine runs `load` in its own
    thread (`Engine.load_adapter`)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.routing = Routing()
        self.layers: dict[str, MultiLoraLinear] = {}
        self.indices: dict[str, int] = {}
        self.slots = BASE + 1  # slots in every adapted layer, the base model's included

    def index(self, name: str | None) -> int:
        if name is None:
            return BASE
        if name not in self.indices:
            raise AdapterError(f"no adapter named {name!r} is loaded (loaded: {', '.join(self.indices) or 'none'})")
        return self.indices[name]

    def route(self, indices: Sequence[int]) -> None:
        self.routing.set(indices, next(self.model.parameters()).device)

    def load(self, name: str, folder: Path, *, live: set[int] = frozenset()) -> int:
        """Put the adapter in `folder` under `name`; `live`: slots that requests still use. Its slot."""
        weights, scale = read_adapter(folder)
        by_layer: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            layer, _, kind = key.removeprefix(_PREFIX).rpartition(".lora_")
            by_layer.setdefault(layer, {})[kind.split(".")[0]] = tensor
        modules = dict(self.model.named_modules())
        for layer, pair in by_layer.items():
            module = self.layers.get(layer) or modules.get(layer)
            base = module.base if isinstance(module, MultiLoraLinear) else module
            if not isinstance(base, nn.Linear) or set(pair) != {"A", "B"}:
                raise AdapterError(
                    f"{folder}: the adapter changes {layer!r}, which is not a linear layer of this model"
                )
            a, b = pair["A"], pair["B"]
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
                raise AdapterError(
                    f"{folder}: {layer!r} has shape {tuple(base.weight.shape)} in this model, "
                    f"the adapter's update is {(b.shape[0], a.shape[1])}: it was trained on another base model"
                )
        taken = set(live) | set(self.indices.values())
        index = next(k for k in range(BASE + 1, len(taken) + 2) if k not in taken)
        self.slots = max(self.slots, index + 1)
        for layer in sorted(set(by_layer) | set(self.layers)):
            pair = by_layer.get(layer)
            self._wrapped(layer, modules).put(index, *(pair["A"], pair["B"]) if pair else (None, None), scale)
        self.indices[name] = index
        return index

    def unload(self, name: str) -> None:
        """`name` is served no more; its slot is free once no request uses it (`load`'s `live`)."""
        self.indices.pop(name, None)

    def _wrapped(self, layer: str, modules: Mapping[str, nn.Module]) -> MultiLoraLinear:
        """The layer, wrapped on first use with every slot (the adapters loaded before leave it
        alone: zeros)."""
        if layer not in self.layers:
            parent_name, _, child = layer.rpartition(".")
            wrapped = MultiLoraLinear(modules[layer], self.routing)
            wrapped.put(self.slots - 1, None, None, 1.0)
            setattr(modules[parent_name] if parent_name else self.model, child, wrapped)
            self.layers[layer] = wrapped
        return self.layers[layer]


def read_adapter(folder: Path) -> tuple[dict[str, torch.Tensor], float]:
    """A PEFT LoRA folder's weights (by key) and its scale (lora_alpha / r, or / sqrt(r) for rsLoRA)."""
    from safetensors.torch import load_file

    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterError(f"{folder}: not a LoRA adapter folder (adapter_config.json and adapter_model.safetensors)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return load_file(weights_file), scale
