"""The training loop: micro-batches → loss → backward → clipped optimizer step → schedule, with periodic
evaluation, logging and atomic checkpoints. Everything that is not the loop lives beside it in train/.

`batches` is any iterator of ready batches (inputs + labels) with state_dict()/load_state_dict(), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.nn.moe import collect_moe, moe_layers
from ptmkit.parallel.apply import parallelize
from ptmkit.parallel.collectives import any_rank, mean_over_ranks, token_weight
from ptmkit.parallel.mesh import ParallelState
from ptmkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ptmkit.train.dcp import is_dcp_checkpoint, load_dcp_checkpoint, save_dcp_checkpoint
from ptmkit.train.logging import MetricsLogger, plot_run, progress
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig, build_scheduler


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer updates
    grad_accum: int = 1  # micro-batches per update
    precision: str = "bf16"  # fp32 | bf16 | fp16 (bf16 autocast is ~2x faster than fp32 on this CPU)
    log_every: int = 10  # write a metrics.jsonl record every n steps
    eval_every: int = 200  # 0 = only at the end
    checkpoint_every: int = 500  # 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk (older ones are deleted)
    seed: int = 0  # model init, data order, masking and dropout all derive from it
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    activation_checkpointing: int = 0  # 0 = off; k = recompute every k-th block in backward (1 = all; saves memory)
    checkpoint_format: str = "auto"  # auto | safetensors | dcp (torch.distributed.checkpoint; auto = dcp when distributed)
    progress_bar: bool = True  # tqdm bar with ETA on stderr

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "keep_last", "activation_checkpointing"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train: {name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train: precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.checkpoint_format not in ("auto", "safetensors", "dcp"):
            raise ConfigError(f"train: checkpoint_format must be auto, safetensors or dcp, got {self.checkpoint_format!r}")


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint and exit. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def bind_objective(model: nn.Module, objective) -> tuple[nn.Module, nn.Module | None]:
    """(the module whose parameters the optimizer updates, the objective's auxiliary module or None).

    An objective with auxiliary networks (ELECTRA's generator) builds them for this model in `bind(model)`;
    tensors they share with the model (the generator uses its embeddings) appear once in parameters().
    """
    module = TrainingModule(model, objective)
    return (model if module.aux is None else module), module.aux


class TrainingModule(nn.Module):
    """The model and the objective's auxiliary networks as one module whose forward(batch) is the training loss.

    One root for the whole step: FSDP2 and DDP hook a module's forward, and an objective may run several networks
    (ELECTRA's generator, then the discriminator). Children are named `model` and `objective`, in that order, so
    optimizer states and checkpoints name the same tensors with or without the wrapper.
    """

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        aux = objective.bind(model) if hasattr(objective, "bind") else None
        if aux is not None:
            self.objective = aux
        self.loss_fn = objective  # a plain object, not a module
        self._moe = moe_layers(self)  # sparse MoE layers (model + objective networks); () for dense models

    @property
    def aux(self) -> nn.Module | None:
        return getattr(self, "objective", None)

    def forward(self, batch: dict[str, torch.Tensor]):
        if not self._moe:  # dense model: the objective's loss as is
            return self.loss_fn.loss(self.model, batch)
        for layer in self._moe:  # a layer skipped this step (LayerDrop) must not report last step's losses
            layer.clear_router_state()
        loss, metrics = self.loss_fn.loss(self.model, batch)
        # Switch §2.2 / ST-MoE: each MoE layer's weighted load-balancing + z-loss joins the training loss;
        # metrics["loss"] stays the objective's, so perplexity and evaluation compare with dense models
        router_loss, moe_metrics = collect_moe(self._moe)
        if router_loss is not None and self.training:
            loss = loss + router_loss
        return loss, {**metrics, **moe_metrics}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(
    model: torch.nn.Module,
    objective,
    batches,
    run_dir: str | Path,
    cfg: TrainConfig,
    optim_cfg: OptimConfig,
    sched_cfg: ScheduleConfig,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    parallel: ParallelState | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train for cfg.steps updates (continuing from the last checkpoint when resume=True).

    `on_step(t)` runs before each optimizer step t (0-based), e.g. a layer-drop schedule.
    `evaluate` receives the TrainingModule (call it on a batch for the loss). With `parallel` (a torchrun launch),
    the module is sharded/replicated by ptmkit.parallel, every rank runs this loop on its slice of each global
    batch, metrics are averaged over the data-parallel ranks and written by rank 0, checkpoints are DCP.
    """
    run_dir = Path(run_dir)
    device = parallel.device if parallel is not None else torch.device(cfg.device)
    main = parallel is None or parallel.is_main
    model.to(device)
    trained = TrainingModule(model, objective)  # model (+ the objective's generator, if any)
    pipeline = None
    if parallel is not None and parallel.cfg.pp > 1:  # keep this rank's stage only; FSDP2 then wraps the stage
        from ptmkit.parallel.pipeline import Pipeline

        micro = parallel.cfg.pp_microbatches or 2 * parallel.cfg.pp
        pipeline = Pipeline(trained, parallel, micro, parallel.cfg.pp_schedule, device)
    parallelize(pipeline.module if pipeline else trained, parallel, cfg.activation_checkpointing,
                unused_parameters=on_step is not None)
    if pipeline is not None:
        pipeline.build()
    optimizer = build_optimizer(trained, optim_cfg)
    scheduler = build_scheduler(optimizer, sched_cfg, cfg.steps)
    precision = Precision(cfg.precision, device)
    use_dcp = cfg.checkpoint_format == "dcp" or (cfg.checkpoint_format == "auto" and parallel is not None)
    start = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        if is_dcp_checkpoint(ckpt):
            state = load_dcp_checkpoint(ckpt, trained, optimizer, scheduler, precision)
        elif parallel is not None:
            raise ConfigError(f"{ckpt} is a single-process checkpoint; a distributed run resumes from DCP checkpoints "
                              "(start the single-process run with --train.checkpoint_format dcp to move it)")
        else:
            state = load_checkpoint(ckpt, model, optimizer, scheduler, precision, objective_module=trained.aux)
        batches.load_state_dict(state["data"])
        start = state["step"]
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    logger = MetricsLogger(run_dir, resume_step=start) if main else None
    if logger is not None and start == 0:
        logger.path.write_text("")  # a fresh run starts a fresh history
    bar = progress(cfg.steps, start, desc=f"train {run_dir.name}", enabled=cfg.progress_bar and main)
    last_eval: dict[str, float] = {}
    step = start
    stopped = False
    data_time = compute_time = 0.0
    tokens_seen = 0

    def checkpoint() -> None:
        if use_dcp:
            save_dcp_checkpoint(run_dir, step, trained, optimizer, scheduler, precision, batches.state_dict(),
                                cfg.keep_last)
        else:
            save_checkpoint(run_dir, step, model, optimizer, scheduler, precision, batches.state_dict(),
                            cfg.keep_last, objective_module=trained.aux)

    with _StopFlag() as stop:
        while step < cfg.steps:
            if on_step is not None:
                on_step(step)
            trained.train()
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            step_data, ntok = 0.0, 0
            for _ in range(cfg.grad_accum):
                td = time.perf_counter()
                batch = _to_device(next(batches), device)
                step_data += time.perf_counter() - td
                if pipeline is not None:  # forward and backward of every micro-batch, through the stages
                    with precision.autocast():
                        loss, metrics = pipeline.step(batch)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                    ntok += batch["input_ids"].numel()
                    continue
                with precision.autocast():
                    loss, metrics = trained(batch)
                if parallel is not None and parallel.cfg.dp > 1 and "predicted_tokens" in metrics:
                    loss = loss * token_weight(metrics["predicted_tokens"], parallel.cfg.dp)
                    metrics = {**metrics, "loss": float(loss.detach())}  # its mean over ranks: the global batch's
                precision.backward(loss / cfg.grad_accum)
                ntok += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
            grad_norm, skipped = precision.step(
                optimizer, trained.parameters(), optim_cfg.grad_clip,
                group=pipeline.group if pipeline is not None else None,
                counted_elsewhere=pipeline.module.counted_elsewhere() if pipeline is not None else frozenset())
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            step += 1
            record = {k: v / cfg.grad_accum for k, v in sums.items() if k != "predicted_tokens"}
            log_now = step % cfg.log_every == 0 or step == start + 1 or step == cfg.steps
            if parallel is not None:
                ntok *= parallel.cfg.dp  # tokens of the global batch
                if log_now:  # the same steps on every rank, so the collective matches up
                    record = mean_over_ranks(record)
                stop.requested = any_rank(stop.requested)  # Ctrl-C reaches every rank; all must stop together
            tokens_seen += ntok
            data_time += step_data
            compute_time += elapsed - step_data
            bar.update(1)
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{lr:.2e}")
            if logger is not None and log_now:
                record.update(step=step, split="train", lr=lr, grad_norm=grad_norm, skipped_steps=precision.skipped_steps,
                              step_s=elapsed, tokens_per_s=ntok / elapsed, data_fraction=data_time / (data_time + compute_time))
                if flops_per_token and peak_flops:
                    world = parallel.world_size if parallel is not None else 1
                    record["mfu"] = flops_per_token * ntok / elapsed / (peak_flops * world)
                logger.log(record)
            if evaluate is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                last_eval = evaluate(trained)
                if logger is not None:
                    logger.log({"step": step, "split": "eval", **last_eval})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
            if stop.requested:
                checkpoint()
                bar.write(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                stopped = True
                break
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                checkpoint()
    bar.close()
    if logger is not None:
        logger.close()
        plot_run(run_dir)
    return {
        "steps": step,
        "interrupted": stopped,
        "eval": last_eval,
        "skipped_steps": precision.skipped_steps,
        "data_fraction": data_time / max(1e-9, data_time + compute_time),
        "tokens": tokens_seen,
        "trained": trained,
    }
