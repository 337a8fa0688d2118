"""The state-dict adapter engine: Hugging Face checkpoint names <-> ptmkit module names, with shape checks.

Each family file supplies an Adapter (config and backbone tensors both ways, plus one rename table per
task head). Checkpoint names live only in models/convert/ (torchtitan `state_dict_adapter.py` pattern).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: the message lists every missing, unexpected or mis-shaped tensor."""


class Reader:
    """Hands out checkpoint tensors by name and remembers what was asked for but absent."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = dict(state)
        self.missing: list[str] = []
        self.origin: dict[int, str] = {}  # id(tensor) -> checkpoint name, for error messages

    def take(self, name: str) -> torch.Tensor | None:
        if name in self.state:
            t = self.state.pop(name)
            self.origin[id(t)] = name
            return t
        self.missing.append(name)
        return None

    def has(self, name: str) -> bool:
        return name in self.state


@dataclass
class Adapter:
    """How one family's Hugging Face checkpoints map onto ptmkit modules.

    Head tables map ptmkit names (relative to the task model) to HF names; `{p}` stands for the backbone
    prefix (e.g. "bert.") so a head living inside the HF backbone (BERT's pooler) round-trips.
    """

    model_type: str
    prefix: str  # e.g. "bert." in BertForMaskedLM
    architectures: dict[str, str]  # HF class name -> ptmkit task
    heads: dict[str, dict[str, str]]  # task -> {ptmkit name: HF name}
    head_key_prefixes: tuple[str, ...] = ()  # HF names that belong to some task head
    ignore: tuple[str, ...] = ()  # glob patterns of non-weight buffers found in old checkpoints
    tied_ignore: dict[str, tuple[str, ...]] = field(default_factory=dict)  # task -> tied copies to skip
    optional: tuple[str, ...] = ()  # head tensors a checkpoint may omit (kept at their initial value)
    # config.json keys that fix the model's shapes. Loading weights checks every shape against them; building a
    # randomly initialised model (ptmkit.models.init_model) has no weights to check against, so it refuses a config
    # that lacks one rather than silently taking the family's default size.
    shape_keys: tuple[str, ...] = ()

    # Family files override these four.
    def config_from_hf(self, hf: dict[str, Any]):
        raise NotImplementedError

    def config_to_hf(self, cfg) -> dict[str, Any]:
        raise NotImplementedError

    def backbone_from_hf(self, r: Reader, cfg) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backbone_to_hf(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def architecture(self, task: str) -> str:
        for arch, t in self.architectures.items():
            if t == task:
                return arch
        raise CheckpointError(f"{self.model_type} has no Hugging Face architecture for task {task!r}")

    def task_of(self, architectures: list[str] | None) -> str:
        if not architectures:
            return "base"
        arch = architectures[0]
        if arch not in self.architectures:
            raise CheckpointError(
                f"unsupported {self.model_type} architecture {arch!r}; supported: {sorted(self.architectures)}"
            )
        return self.architectures[arch]

    def is_ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.ignore)

    def is_head_key(self, name: str) -> bool:
        return any(name.startswith(p.format(p="")) for p in self.head_key_prefixes)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Task checkpoints nest the backbone under `prefix`; base checkpoints do not. Accept both."""
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def tied_embedding(r: Reader, shared: str, copies: list[str]) -> torch.Tensor | None:
    """The shared token table; per-stack copies (`encoder.embed_tokens.weight`, ...) that old checkpoints also
    store must be the same tensor, since ptmkit (like the papers) has one table."""
    table = r.take(shared) if r.has(shared) else None
    for name in copies:
        if r.has(name):
            copy = r.take(name)
            if table is None:
                table = copy
                r.origin[id(table)] = name
            elif copy.shape != table.shape or not torch.equal(copy, table):
                raise CheckpointError(
                    f"{name} differs from {shared}: untied per-stack token embeddings are not supported"
                )
    if table is None:
        r.missing.append(shared)
    return table


def split_rows(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(t, sizes, dim=0))


def expect_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size], hf_names: dict[str, str]) -> None:
    """Compare converted tensors against the model's own; raise one error listing every mismatch."""
    bad = [
        f"  {hf_names.get(k, 'fused/transposed tensor')} -> {k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k])}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if bad:
        raise CheckpointError(
            "checkpoint tensor shapes do not match the model (is config.json from the same checkpoint?):\n"
            + "\n".join(bad)
        )


# ---- fused projections -------------------------------------------------------------------------------------------
# ptmkit fuses q/k/v (and gate/up) into one matmul. The rows are interleaved by key/value head (and by feed-forward
# unit) rather than stacked [q; k; v], so that any contiguous slice of rows — what tensor parallelism gives each
# rank — holds whole attention groups with their own keys and values (Megatron-LM's layout). Checkpoints of other
# libraries keep separate q, k, v matrices; these helpers convert both ways, for weights (rows, in) and biases (rows,).


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Separate projections -> ptmkit's fused rows: for each key/value head j, its query heads
    [j*g, (j+1)*g) (g = num_heads / num_kv_heads), then key head j, then value head j."""
    g = num_heads // num_kv_heads
    rest = q.shape[1:]
    d = q.shape[0] // num_heads
    parts = [q.reshape(num_kv_heads, g * d, *rest), k.reshape(num_kv_heads, d, *rest), v.reshape(num_kv_heads, d, *rest)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def split_qkv(w: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of fuse_qkv: (q, k, v) with rows in head order, as separate projections store them."""
    g = num_heads // num_kv_heads
    rest = w.shape[1:]
    d = w.shape[0] // (num_heads + 2 * num_kv_heads)
    grouped = w.reshape(num_kv_heads, (g + 2) * d, *rest)
    q = grouped[:, : g * d].reshape(num_heads * d, *rest)
    k = grouped[:, g * d : (g + 1) * d].reshape(num_kv_heads * d, *rest)
    v = grouped[:, (g + 1) * d :].reshape(num_kv_heads * d, *rest)
    return q, k, v


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Gated feed-forward: rows alternate gate_0, up_0, gate_1, up_1, ... (each unit's pair stays together)."""
    return torch.stack([gate, up], dim=1).reshape(-1, *gate.shape[1:])


def split_gate_up(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = w.reshape(w.shape[0] // 2, 2, *w.shape[1:])
    return pairs[:, 0], pairs[:, 1]
