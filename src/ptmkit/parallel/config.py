"""The `parallel:` section of a run: how many ranks replicate, shard, split tensors and form pipeline stages.

World size = dp_replicate x dp_shard x tp x pp (torchrun's --nproc-per-node x nodes). Every degree is checked
against the world size and the model before anything is built, and an impossible layout names the number to
change.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptmkit.config import ConfigError


@dataclass
class ParallelConfig:
    dp_replicate: int = 1  # data-parallel replicas (DDP; with dp_shard > 1: HSDP, replicas of shard groups)
    dp_shard: int = -1  # FSDP2 shard degree (ZeRO-3); -1 = every rank left after dp_replicate, tp and pp
    tp: int = 1  # tensor-parallel degree (Megatron column/row split of attention heads and feed-forward)
    pp: int = 1  # pipeline stages (consecutive blocks per stage)
    pp_schedule: str = "1f1b"  # gpipe | 1f1b (one-forward-one-backward: less activation memory)
    pp_microbatches: int = 0  # micro-batches per step for the pipeline; 0 = 2 x pp
    fsdp_param_dtype: str | None = None  # FSDP2 mixed precision: bf16 | fp16 | fp32 compute copies of the params
    fsdp_reduce_dtype: str = "fp32"  # dtype of the gradient reduce-scatter
    cpu_offload: bool = False  # keep sharded params, grads and optimizer state on the CPU (ZeRO-Offload)
    reshard_after_forward: bool = True  # free gathered params after forward (ZeRO-3); False = ZeRO-2-like
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU

    def __post_init__(self) -> None:
        for name in ("dp_replicate", "tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.dp_shard == 0 or self.dp_shard < -1:
            raise ConfigError(f"parallel.dp_shard must be >= 1 or -1 (= all remaining ranks), got {self.dp_shard}")
        if self.pp_schedule not in ("gpipe", "1f1b"):
            raise ConfigError(f"parallel.pp_schedule must be gpipe or 1f1b, got {self.pp_schedule!r}")
        if self.pp_microbatches < 0:
            raise ConfigError(f"parallel.pp_microbatches must be >= 0 (0 = 2 x pp), got {self.pp_microbatches}")
        for name in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
            v = getattr(self, name)
            if v is not None and v not in DTYPES:
                raise ConfigError(f"parallel.{name} must be one of {sorted(DTYPES)}, got {v!r}")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(f"parallel.backend must be auto, gloo or nccl, got {self.backend!r}")

    def resolve(self, world_size: int) -> "ParallelConfig":
        """Fill dp_shard = -1 from the world size and check that the degrees multiply to it."""
        fixed = self.dp_replicate * self.tp * self.pp
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"world size {world_size} is not divisible by dp_replicate x tp x pp = {self.dp_replicate} x "
                    f"{self.tp} x {self.pp} = {fixed}; change parallel.tp / pp / dp_replicate or --nproc-per-node"
                )
            dp_shard = world_size // fixed
        if fixed * dp_shard != world_size:
            raise ConfigError(
                f"parallel degrees dp_replicate x dp_shard x tp x pp = {self.dp_replicate} x {dp_shard} x {self.tp} x "
                f"{self.pp} = {fixed * dp_shard} ranks, but the world size is {world_size}; set parallel.dp_shard "
                f"to -1 or to {world_size // fixed if world_size % fixed == 0 else 'a divisor'}, or launch "
                f"{fixed * dp_shard} processes (torchrun --nproc-per-node {fixed * dp_shard})"
            )
        out = ParallelConfig(**{**self.__dict__, "dp_shard": dp_shard})
        return out

    @property
    def dp(self) -> int:
        """Ranks that see different data (the data-parallel degree); needs resolve() first."""
        return self.dp_replicate * self.dp_shard

    @property
    def enabled(self) -> bool:
        return self.dp_replicate * max(self.dp_shard, 1) * self.tp * self.pp > 1


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_model(cfg: ParallelConfig, num_layers: int, num_heads: int, num_kv_heads: int | None,
                intermediate_size: int | None, batch_size: int) -> None:
    """Model-shape constraints of a resolved layout, each naming what to change."""
    if cfg.tp > 1:
        if num_heads % cfg.tp:
            raise ConfigError(f"parallel.tp = {cfg.tp} does not divide the model's {num_heads} attention heads; "
                              f"use a tp that divides {num_heads}")
        if num_kv_heads is not None and num_kv_heads % cfg.tp:
            raise ConfigError(f"parallel.tp = {cfg.tp} does not divide the model's {num_kv_heads} key/value heads; "
                              f"use a tp that divides {num_kv_heads}")
        if intermediate_size is not None and intermediate_size % cfg.tp:
            raise ConfigError(f"parallel.tp = {cfg.tp} does not divide the feed-forward width {intermediate_size}")
    if cfg.pp > num_layers:
        raise ConfigError(f"parallel.pp = {cfg.pp} pipeline stages but the model has only {num_layers} layers; "
                          f"use pp <= {num_layers}")
    if batch_size % cfg.dp:
        raise ConfigError(f"data.batch_size {batch_size} (the global batch) is not divisible by the {cfg.dp} "
                          f"data-parallel ranks (dp_replicate x dp_shard); use a multiple of {cfg.dp}")
    if cfg.pp > 1:
        micro = cfg.pp_microbatches or 2 * cfg.pp
        if (batch_size // cfg.dp) % micro:
            raise ConfigError(f"the per-rank batch {batch_size // cfg.dp} is not divisible by "
                              f"parallel.pp_microbatches = {micro}; change data.batch_size or pp_microbatches")
