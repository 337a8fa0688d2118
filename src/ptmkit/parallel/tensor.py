"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019 §3): inside every block, the fused q/k/v projection and
the feed-forward up (or gate/up) projection are split by output rows (column parallel: each rank computes its
share of the attention groups / hidden units with no communication), and the attention output and feed-forward
down projections by input columns (row parallel: partial sums all-reduced once per sub-layer). Two all-reduces
per block in forward, two in backward. Embeddings, norms and heads stay replicated.

Built on torch.distributed.tensor.parallel.parallelize_module: the split weights are DTensors, so DCP saves and
reloads them in any other layout, and FSDP2 can shard them again over the data-parallel mesh (2-D FSDP x TP).
The fused layouts make contiguous row blocks whole units: q/k/v rows are grouped per key/value head and gate/up
rows alternate (ptmkit.models.convert.base.fuse_qkv / fuse_gate_up), so a rank's rows are complete attention
groups (queries with their own keys and values) and complete gate/up pairs.
"""

from __future__ import annotations

from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.attention import SelfAttention
from ptmkit.nn.stacks import transformer_blocks



def block_plan(block: nn.Module) -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    attn, ffn = getattr(block, "attn", None), getattr(block, "ffn", None)
    if not isinstance(attn, SelfAttention) or ffn is None or hasattr(block, "cross"):
        raise ConfigError(f"tensor parallelism splits fused self-attention + feed-forward blocks; "
                          f"{type(block).__name__} is not one (set parallel.tp to 1)")
    up = "ffn.gate_up" if hasattr(ffn, "gate_up") else "ffn.up"
    return {"attn.qkv": ColwiseParallel(), "attn.out": RowwiseParallel(),
            up: ColwiseParallel(), "ffn.down": RowwiseParallel()}


def apply_tensor_parallel(module: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    # a backbone declares `supports_tensor_parallel` when its blocks have the fused layouts block_plan splits
    unsupported = sorted({getattr(m, "family", type(m).__name__) for m in module.modules()
                          if isinstance(getattr(m, "family", None), str) and m.family
                          and not getattr(m, "supports_tensor_parallel", False)})
    if unsupported:
        raise ConfigError(f"tensor parallelism supports backbones that declare supports_tensor_parallel (bert, "
                          f"roberta, electra, gpt2, llama); this model is {unsupported} (set parallel.tp to 1 and "
                          "shard it with parallel.dp_shard instead)")
    blocks = transformer_blocks(module)
    if not blocks:
        raise ConfigError(f"{type(module).__name__} has no transformer blocks to split (parallel.tp must be 1)")
    for block in blocks:
        parallelize_module(block, tp_mesh, block_plan(block))
