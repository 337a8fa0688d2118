"""Process group and device mesh for a torchrun launch: which rank this is, which data it reads, which device."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ptmkit.parallel.config import ParallelConfig


@dataclass
class ParallelState:
    cfg: ParallelConfig  # resolved (dp_shard filled in)
    rank: int
    world_size: int
    device: torch.device
    mesh: object | None  # torch.distributed.device_mesh.DeviceMesh over (pp, dp_replicate, dp_shard, tp), or None
    dp_rank: int  # index among the ranks that read different data
    pp_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def submesh(self, *names: str):
        """The mesh over `names` (those of size > 1 only), or None when all have size 1."""
        if self.mesh is None:
            return None
        keep = [n for n in names if n in self.mesh.mesh_dim_names]
        if not keep:
            return None
        return self.mesh[tuple(keep)] if len(keep) > 1 else self.mesh[keep[0]]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(cfg: ParallelConfig, device: str) -> ParallelState | None:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1), or return None for one process.

    On CUDA each rank takes the GPU of its LOCAL_RANK; on CPU the gloo backend is used.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        cfg.resolve(1)  # a layout that needs several ranks is an error, not a silent single-process run
        return None
    resolved = cfg.resolve(world)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = resolved.backend if resolved.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    from torch.distributed.device_mesh import init_device_mesh

    dims = [(n, getattr(resolved, n)) for n in ("pp", "dp_replicate", "dp_shard", "tp")]
    dims = [(n, s) for n, s in dims if s > 1] or [("dp_shard", 1)]
    mesh = init_device_mesh(dev.type, tuple(s for _, s in dims), mesh_dim_names=tuple(n for n, _ in dims))
    coord = dict(zip(mesh.mesh_dim_names, mesh.get_coordinate()))
    dp_rank = coord.get("dp_replicate", 0) * resolved.dp_shard + coord.get("dp_shard", 0)
    return ParallelState(resolved, dist.get_rank(), world, dev, mesh, dp_rank, coord.get("pp", 0))


def teardown(wait: bool = True) -> None:
    """Shut the process group down. `wait`: first let every rank arrive (rank 0 may still be writing the exported
    model; a rank that tears gloo down while a peer still works can abort at exit). After an error, do not wait —
    the other ranks may never arrive."""
    if dist.is_initialized():
        gc.collect()  # release finished collectives (FSDP keeps handles) while the process group can still free them
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def run_on_ranks(cfg: ParallelConfig, device: str, fn, *args):
    """`fn(*args, state)` in this process: every rank of a torchrun launch (state = this rank's ParallelState), or a
    single process (state = None). The process group is set up before and torn down after, also on an error."""
    state = setup(cfg, device)
    try:
        result = fn(*args, state)
    except BaseException:
        teardown(wait=False)  # the other ranks may never arrive
        raise
    teardown()
    return result
