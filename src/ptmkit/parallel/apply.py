"""Apply parallelism to a finished single-device training module, in the one order that composes:
tensor parallel (DTensor weights) -> activation checkpointing (around each block) -> FSDP2 / DDP (data parallel).

The module is the TrainingModule (model + the objective's auxiliary networks, forward(batch) -> loss), so FSDP2's
root unit covers everything a training step touches: embeddings shared with ELECTRA's generator, heads, the
objective's own layers. Each transformer block is its own FSDP2 unit, gathered just before it runs and freed after.
`prepare_training` is the one entry the training engine calls: it cuts a pipeline stage first when parallel.pp > 1
(ptmkit.parallel.pipeline), then parallelizes what this rank keeps.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.parallel.config import DTYPES
from ptmkit.parallel.mesh import ParallelState
from ptmkit.parallel.pipeline import Pipeline
from ptmkit.nn.stacks import transformer_blocks
from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing


def parallelize(module: nn.Module, state: ParallelState | None, activation_checkpointing: int = 0,
                unused_parameters: bool = False) -> nn.Module:
    """`unused_parameters`: some parameters may get no gradient in a step (layer drop skips blocks); DDP must then
    look for them after each backward."""
    if state is not None and state.cfg.pp > 1 and state.cfg.tp > 1:
        raise ConfigError("parallel.pp > 1 together with parallel.tp > 1 is not supported yet; set one of them to 1")
    if state is not None and state.cfg.tp > 1:
        from ptmkit.parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(module, state.submesh("tp"))
    if activation_checkpointing:
        apply_activation_checkpointing(module, activation_checkpointing)
    if state is None:
        return module
    dp_mesh = state.submesh("dp_replicate", "dp_shard")
    if dp_mesh is None:
        return module
    cfg = state.cfg
    if cfg.dp_shard > 1:  # FSDP2 (ZeRO-3), or HSDP when dp_replicate > 1 too
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        mp = MixedPrecisionPolicy(
            param_dtype=getattr(torch, DTYPES[cfg.fsdp_param_dtype]) if cfg.fsdp_param_dtype else None,
            reduce_dtype=getattr(torch, DTYPES[cfg.fsdp_reduce_dtype]),
        )
        offload = CPUOffloadPolicy(pin_memory=False) if cfg.cpu_offload else OffloadPolicy()
        kw = dict(mesh=dp_mesh, mp_policy=mp, offload_policy=offload)
        blocks = transformer_blocks(module)
        for i, block in enumerate(blocks):
            # the last block's params are needed again first in backward: keeping them saves one all-gather
            fully_shard(block, reshard_after_forward=cfg.reshard_after_forward and i < len(blocks) - 1, **kw)
        fully_shard(module, reshard_after_forward=cfg.reshard_after_forward, **kw)
    else:  # plain data parallel: DDP's bucketed all-reduce, applied in place (no wrapper class)
        from torch.distributed._composable.replicate import replicate

        replicate(module, device_mesh=dp_mesh, find_unused_parameters=unused_parameters)
    return module


def prepare_training(module: nn.Module, state: ParallelState | None, activation_checkpointing: int = 0,
                     unused_parameters: bool = False) -> Pipeline | None:
    """Parallelize the TrainingModule in place for this rank; returns the pipeline that runs its steps when
    parallel.pp > 1 (this rank's stage only is kept, FSDP2 then wraps the stage), else None."""
    pipeline = None
    if state is not None and state.cfg.pp > 1:
        micro = state.cfg.pp_microbatches or 2 * state.cfg.pp
        pipeline = Pipeline(module, state, micro, state.cfg.pp_schedule, state.device)
    parallelize(pipeline.module if pipeline else module, state, activation_checkpointing,
                unused_parameters=unused_parameters)
    if pipeline is not None:
        pipeline.build()
    return pipeline


@contextlib.contextmanager
def unsharded(module: nn.Module):
    """Run submodules of an FSDP2-sharded module directly (e.g. its model's forward for predictions, outside the
    training step): the root unit's own parameters (embeddings, heads) are gathered for the duration, the blocks
    gather themselves as usual. A no-op for modules that are not sharded."""
    if not callable(getattr(module, "unshard", None)):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()
