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
