"""Position-wise feed-forward networks: two-layer MLP (GELU/ReLU) and gated SwiGLU (Shazeer 2020).

Dimension legend: B batch, T length, H hidden size, F intermediate size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# "gelu" is the exact erf form (BERT); "gelu_new"/"gelu_tanh" the tanh approximation (GPT-2).
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(self.act(self.up(x))))


class GatedMLP(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One copy de-interleaves the pairs into (2, B, T, F): silu, the product and their backward then run on
        # contiguous tensors. On the strided views pairs[..., 0] / [..., 1] they were 2x slower, and each view's
        # backward zero-filled a full (B, T, F, 2) gradient: 24 -> 13 ms per SmolLM2 layer (fwd + bwd, 8 x 128, CPU).
        gate, up = self.gate_up(x).unflatten(-1, (-1, 2)).movedim(-1, 0).contiguous().unbind(0)  # (B, T, F) each
        return self.down(self.drop(self.act(gate) * up))
