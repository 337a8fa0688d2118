"""What every quantiser shares: the target Linear layers (through the one matcher, ptmkit.adapt.base.find_sites), the
record of what was quantised and to how many bits, the bit width of stored integers, and running a batch forward.

A quantiser is a model transform `apply(model, cfg) -> model` in place, like torchao's `quantize_(model, config)`,
which most of them call with a filter built from the matched sites. The record lives on the model as a plain
attribute (not a submodule or buffer), is what `report(model)` returns and is what save_quantized writes into
config.json; quantising a model twice is an error, because the second pass would read integers as if they were the
fp32 weights.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ptmkit.nn.targets import Site, find_sites, refuse_tied
from ptmkit.config import ConfigError

RECORD = "_ptmkit_quantization"  # model attribute holding the QuantRecord

# The Linear layers of the Transformer blocks (layers.0.attn.qkv, encoder.layers.3.ffn.down, ...): where the weights
# and the FLOPs are. Embeddings are not Linear, and output heads (lm_head, the MLM head, a classifier) sit outside
# `layers.N`, so they stay fp32 unless named: Q8BERT and Q-BERT also leave the classifier in full precision, and a
# tied LM head shares the input embedding.
DEFAULT_TARGETS = [r"re:(.*\.)?layers\.\d+\..*"]
# A Mixture-of-Experts router picks experts by comparing logits: a rounding error flips the choice, and it is a tiny
# matrix, so it stays fp32 (as vLLM and torchao's MoE recipes keep the gate).
DEFAULT_EXCLUDE = ["router"]


@dataclass
class QuantRecord:
    """What a quantiser did: per module the weight bits it stored, the activation bits at run time (None = fp32
    activations) and the group size (None = one scale per output row or per tensor)."""

    method: str
    config: dict[str, Any]
    weight_bits: dict[str, int]  # module name -> bits of its stored integer weights
    activation_bits: int | None
    group_size: int | None
    numel: dict[str, int] = field(default_factory=dict)  # module name -> weights quantised (for the average)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific findings (Q-BERT: the Hessian traces)

    @property
    def average_bits(self) -> float:
        """Bits per quantised weight, weighted by each layer's size (Q-BERT's budget is this number)."""
        total = sum(self.numel.values())
        return sum(self.weight_bits[n] * k for n, k in self.numel.items()) / max(total, 1)


def report(model: nn.Module) -> QuantRecord:
    """The record of the quantiser applied to `model`; a model that was not quantised is an error."""
    rec = getattr(model, RECORD, None)
    if rec is None:
        raise ConfigError(f"{type(model).__name__} is not quantised: apply a quantiser first "
                          "(ptmkit.compress.quant.quantize(model, 'int8-dynamic'))")
    return rec


def register(model: nn.Module, record: QuantRecord) -> None:
    object.__setattr__(model, RECORD, record)  # a plain attribute: not a submodule, not in the state dict


def refuse_quantized(model: nn.Module, method: str) -> None:
    rec = getattr(model, RECORD, None)
    if rec is not None:
        raise ConfigError(f"{method}: the model is already quantised ({rec.method}); quantise the fp32 model once "
                          "(load it again to try another method)")


def quant_sites(model: nn.Module, targets: Sequence[str], exclude: Sequence[str], method: str,
                types: tuple[type, ...] = (nn.Linear,)) -> list[Site]:
    """The target modules of `types`, whole (a fused qkv is quantised as one matrix, not by its q/k/v parts)."""
    refuse_quantized(model, method)
    sites = find_sites(model, targets, types=types, exclude=exclude, method=method, parts=False)
    refuse_tied(model, sites, method)  # a tied LM head would re-point only its own weight and silently untie
    hooked = [s.name for s in sites if s.module._forward_hooks or s.module._forward_pre_hooks]
    if hooked:
        raise ConfigError(f"{method}: {hooked[0]} carries a delta-tuning method (a hook on its output); merge it "
                          "into the weights (ptmkit.adapt.merge, then remove) before quantising")
    return sites


def check_group_size(sites: list[Site], group_size: int | None, method: str) -> None:
    """A group of `group_size` weight columns (a Linear's inputs, an embedding's dimensions) shares one scale, so it
    must divide every target's row length."""
    if group_size is None:
        return
    if group_size < 1:
        raise ConfigError(f"{method}: group_size must be >= 1 (or null for one scale per row), got {group_size}")
    cols = {s.name: s.module.weight.shape[-1] for s in sites}  # Linear: in_features; Embedding: embedding_dim
    bad = [(n, k) for n, k in cols.items() if k % group_size]
    if bad:
        name, k = bad[0]
        fits = [g for g in (256, 128, 64, 32, 16) if all(c % g == 0 for c in cols.values())]
        raise ConfigError(f"{method}: group_size {group_size} does not divide the in_features of {name} ({k}); "
                          f"choose a group size that divides every target's in_features, e.g. {fits[:3] or [k]}")


def site_filter(sites: list[Site]) -> Callable[[nn.Module, str], bool]:
    """torchao's quantize_ filter_fn (module, fully qualified name) -> bool, true exactly on the matched sites."""
    names = {s.name for s in sites}
    return lambda module, fqn: fqn in names


def integer_bits(qdata: torch.Tensor) -> int:
    """The smallest signed integer width that holds every stored value: the bit width a tensor really uses."""
    lo, hi = int(qdata.min()), int(qdata.max())
    bits = 1
    while not (-(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1):
        bits += 1
    return bits


def take_batches(batches: Iterable[Any], limit: int, method: str, why: str) -> list[Any]:
    """At most `limit` batches (an endless sampler is fine); none is an error."""
    it = batches if hasattr(batches, "__next__") else iter(batches)  # the engine's samplers have only __next__
    got = []
    for _ in range(limit):
        try:
            got.append(next(it))
        except StopIteration:
            break
    if not got:
        raise ConfigError(f"{method}: {why} got no batches; pass a non-empty iterable of model-input batches "
                          "(dicts of input_ids / attention_mask ..., e.g. 8-32 batches of real text)")
    return got


def run_batch(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """model(**batch) with only the keys its forward takes (a training batch also carries labels)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return model(**batch)
    return model(**{k: v for k, v in batch.items() if k in params})
