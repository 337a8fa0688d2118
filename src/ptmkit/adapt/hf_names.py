"""Where the rows and columns of a ptmkit linear map live in the model's Hugging Face checkpoint.

Adapters are exchanged with PEFT under Hugging Face module names (model.layers.0.self_attn.q_proj), while ptmkit
fuses q/k/v into one matmul in its own row order and GPT-2's checkpoints store weights transposed. Rather than a
second table of names per family, the mapping is measured: each probed weight is replaced by a tensor whose every
row holds its row number (then, in a second pass, every column its column number), the model's own checkpoint
converter (models/io.hf_state_dict) writes them out, and the numbers are read back where they landed. So the
mapping is exactly the one the family's weight conversion uses, for every family at once.

Dimension legend: O out_features, I in_features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.io import base_state_dict, hf_adapter, hf_state_dict

_OFFSET = 2.0 ** 30  # probe codes start far above any weight value; float64 holds them exactly


@dataclass
class HFSlice:
    """Part of a ptmkit module's weight stored as one Hugging Face module's weight."""

    hf_name: str  # the HF module, e.g. "model.layers.0.self_attn.q_proj"
    rows: torch.Tensor  # (O_hf,) the ptmkit output row of each of its output rows
    cols: torch.Tensor  # (I_hf,) the ptmkit input column of each of its input columns
    transposed: bool  # stored (in, out), as GPT-2's Conv1D


def _probe(model: nn.Module, names: list[str], axis: int) -> tuple[dict[str, torch.Tensor], list[tuple[str, float]]]:
    """Convert `model` with each named weight replaced by its row (axis 0) or column (axis 1) numbers plus an
    offset of its own; everything else is zero. Returns the HF tensors and (module name, offset) pairs."""
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in base_state_dict(model, deltas="beside").items()}
    offsets, start = [], _OFFSET
    for name in names:
        w = state[name + ".weight"]
        n = w.shape[axis]
        code = torch.arange(n, dtype=torch.float64) + start
        state[name + ".weight"] = (code[:, None] if axis == 0 else code[None, :]).expand(w.shape)
        offsets.append((name, start))
        start += n + 1
    _, tensors = hf_state_dict(model, state)
    return {k: v for k, v in tensors.items() if v.dtype == torch.float64}, offsets


def _decode(t: torch.Tensor, offsets: list[tuple[str, float]]) -> tuple[str, torch.Tensor]:
    """Which probed module a converted tensor came from, and the row/column numbers it holds."""
    lo = t.min().item()
    for (name, start), nxt in zip(offsets, offsets[1:] + [(None, float("inf"))]):
        if start <= lo < nxt[1]:
            return name, (t - start).long()
    raise ConfigError("adapter export: a converted tensor mixes rows of several modules; this family's checkpoint "
                      "form cannot carry a per-module adapter")


def hf_slices(model: nn.Module, names: list[str]) -> dict[str, list[HFSlice]]:
    """For each ptmkit nn.Linear `names` (module names in `model`), the HF modules that store its weight (none for
    a weight the checkpoint does not store, such as a tied output layer)."""
    hf_adapter(model)  # a family with no Hugging Face form raises CheckpointError here, saying so
    rows_t, offsets = _probe(model, names, 0)
    cols_t, col_offsets = _probe(model, names, 1)
    out: dict[str, list[HFSlice]] = {n: [] for n in names}
    for key, r in rows_t.items():
        if r.dim() != 2 or not key.endswith(".weight"):
            raise ConfigError(f"adapter export: {key} is not a linear layer's weight in the Hugging Face model, so "
                              "PEFT cannot carry a delta for it; save with the ptmkit layout instead")
        name, rows = _decode(r, offsets)
        _, cols = _decode(cols_t[key], col_offsets)
        transposed = bool((rows[:, :1] != rows).any())  # row numbers vary along dim 1: stored (in, out)
        if transposed:
            rows, cols = rows.T, cols.T
        out[name].append(HFSlice(key[: -len(".weight")], rows[:, 0].clone(), cols[0].clone(), transposed))
    return out  # a module with no slice has no weight of its own there (tied or dropped): callers decide
