"""Position-wise feed-forward networks: two-layer MLP (GELU/ReLU) and gated SwiGLU (Shazeer 2020), and the
structured-pruning interface they share with attention (PrunableUnits: keep some heads / neurons, physically).

Dimension legend: B batch, T length, H hidden size, F intermediate size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# "gelu" is the exact erf form (BERT); "gelu_new"/"gelu_tanh" the tanh approximation (GPT-2); "quick_gelu" the
# sigmoid approximation x * sigmoid(1.702 x) that OpenAI's CLIP was trained with (Radford et al. 2021; Hendrycks &
# Gimpel 2016 §2), kept exactly so released CLIP weights compute what they were trained to.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class PrunableUnits:
    """Structured pruning of a module's units (attention heads, feed-forward neurons): `unit_slices` says which
    parameter slices belong to a set of units, `keep_units` keeps only those slices (smaller matrices, so the module
    gets faster; Michel et al. 2019 remove heads this way). The methods that choose units live in
    ptmkit.compress.prune; this is only the surgery, here because load_model (models/io.py) redoes it too.

    `kept_units` records which units of the unpruned module remain and `dense_units` how many it had: save_model
    writes the module at its dense shapes with the removed units zero, so transformers loads it, and load_model
    prunes it back from that record."""

    kept_units: list[int] | None = None  # indices into the unpruned module's units; None = never pruned
    dense_units: int | None = None  # the unpruned module's number of units

    @property
    def num_units(self) -> int:
        raise NotImplementedError

    def unit_slices(self, units: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
        """{parameter name: (dim, indices)}: the slices of each parameter that belong to `units` (sorted)."""
        raise NotImplementedError

    def _check_units(self, units: torch.Tensor) -> None:
        """Refuse a unit set the module's layout cannot keep (attention: partial key/value groups)."""

    def _resized(self, n: int) -> None:
        """Update the module's own counts after keeping n units."""

    def keep_units(self, units) -> None:
        """Keep units `units` (indices into the current units; at least one), removing the others' parameters."""
        n = self.num_units
        units = torch.as_tensor(units, dtype=torch.long).flatten()
        if units.numel() == 0:
            raise ValueError(f"{type(self).__name__}: keep at least one of its {n} units (removing all of them would "
                             "cut the sub-layer out; remove the whole block instead)")
        if int(units.min()) < 0 or int(units.max()) >= n:
            raise ValueError(f"{type(self).__name__}: unit indices must be in [0, {n}), got {units.tolist()}")
        if units.unique().numel() != units.numel():
            raise ValueError(f"{type(self).__name__}: unit indices repeat: {units.tolist()}")
        units = units.sort().values
        self._check_units(units)
        for name, (dim, index) in self.unit_slices(units).items():
            owner, attr = name.rsplit(".", 1)
            linear = self.get_submodule(owner)
            old = getattr(linear, attr)
            setattr(linear, attr, nn.Parameter(old.detach().index_select(dim, index), requires_grad=old.requires_grad))
            linear.out_features, linear.in_features = linear.weight.shape
        base = self.kept_units if self.kept_units is not None else list(range(n))
        self.dense_units = self.dense_units or n
        self.kept_units = [base[i] for i in units.tolist()]
        self._resized(units.numel())


class MLP(PrunableUnits, nn.Module):
    """Linear(H→F) → activation → (dropout) → Linear(F→H).

    `dropout` acts on the activations (T5's dropout_rate, BART's activation_dropout); 0 = none.
    """

    def __init__(self, hidden: int, intermediate: int, activation: str = "gelu", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(hidden, intermediate, bias=bias)
        self.down = nn.Linear(intermediate, hidden, bias=bias)
        self.act = get_activation(activation)
        self.drop = nn.Dropout(dropout)

    @property
    def num_units(self) -> int:
        return self.up.out_features  # F neurons

    def unit_slices(self, units: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
        # neuron i: row i of up (and its bias), column i of down
        out = {"up.weight": (0, units), "down.weight": (1, units)}
        if self.up.bias is not None:
            out["up.bias"] = (0, units)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(self.act(self.up(x))))


class GatedMLP(PrunableUnits, nn.Module):
    """SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x)); gate and up share one fused matmul."""

    def __init__(self, hidden: int, intermediate: int, activation: str = "silu", bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        # rows alternate gate_i, up_i: any contiguous block of rows (a tensor-parallel shard) holds whole pairs
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=bias)
        self.down = nn.Linear(intermediate, hidden, bias=bias)
        self.act = get_activation(activation)
        self.drop = nn.Dropout(dropout)  # on the gated activations (T5 v1.1); 0 = none

    def fused_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Rows of the fused projection that are the gate and the up projection (delta methods target them)."""
        rows = torch.arange(self.gate_up.out_features).view(-1, 2)  # (F, 2)
        return {"gate_up": {"gate": rows[:, 0], "up": rows[:, 1]}}

    @property
    def num_units(self) -> int:
        return self.down.in_features  # F neurons, each a (gate, up) pair of rows

    def unit_slices(self, units: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
        # neuron i: the interleaved rows 2i (gate) and 2i+1 (up), which stay together, and column i of down
        rows = (2 * units[:, None] + torch.arange(2)).flatten()  # (F' * 2,)
        out = {"gate_up.weight": (0, rows), "down.weight": (1, units)}
        if self.gate_up.bias is not None:
            out["gate_up.bias"] = (0, rows)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain_projection():
            # The gate and up rows are every other row of the weight: a matrix with a row stride of two rows, which
            # a GEMM reads as it is (its leading dimension). Two matmuls give gate and up contiguous, so neither the
            # activation nor its backward copies them. Against one matmul and a de-interleaving copy: 5% less time
            # for a SmolLM2 MLP's forward + backward with frozen weights (LoRA), 3% with trained ones (CPU, 8 x 128).
            w, b = self.gate_up.weight, self.gate_up.bias
            gate = F.linear(x, w[0::2], None if b is None else b[0::2])  # (B, T, F)
            up = F.linear(x, w[1::2], None if b is None else b[1::2])
        else:
            # A wrapped projection (hooks of delta methods, a quantised or sharded weight) runs as a module: one copy
            # de-interleaves its output pairs into (2, B, T, F), so silu, the product and their backward run on
            # contiguous tensors (on the strided views pairs[..., 0] / [..., 1] they were 2x slower, and each view's
            # backward zero-filled a full (B, T, F, 2) gradient).
            gate, up = self.gate_up(x).unflatten(-1, (-1, 2)).movedim(-1, 0).contiguous().unbind(0)
        return self.down(self.drop(self.act(gate) * up))

    def _plain_projection(self) -> bool:
        """gate_up is an unwrapped nn.Linear whose weight is a plain tensor: nothing hooks its call (LoRA, IA3,
        adapters do; nor a hook on every module), and slicing the weight means what it says (not a DTensor shard or a
        quantised tensor)."""
        lin = self.gate_up
        hooked_globally = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        return (type(lin) is nn.Linear and not lin._forward_hooks and not lin._forward_pre_hooks
                and not hooked_globally
                and type(lin.weight) in (torch.Tensor, nn.Parameter)
                and (lin.bias is None or type(lin.bias) in (torch.Tensor, nn.Parameter)))
