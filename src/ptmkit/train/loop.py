"""The one training engine, for every stage (pre-training, fine-tuning, and every later stage that brings an
objective): micro-batches → loss → backward → clipped optimizer step → schedule, with logging, periodic
evaluation, keep-best and atomic checkpoints that resume bit for bit. Each part is a small named step of `Trainer`;
everything that is not the loop lives beside it in train/ (optim, schedule, precision, checkpoint, logging).

`batches` is any iterator of ready batches (inputs + labels) with state_dict()/load_state_dict(), so a resumed run
sees exactly the batches it would have seen. The objective is anything with `loss(model, batch) -> (loss, metrics)`
(and optionally `bind(model)` for auxiliary networks); the engine never names a model family or an objective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ptmkit.config import ConfigError
from ptmkit.log import get
from ptmkit.parallel.apply import prepare_training
from ptmkit.parallel.collectives import any_rank, mean_over_ranks, token_weight
from ptmkit.parallel.mesh import ParallelState
from ptmkit.train.best import KeepBest
from ptmkit.train.checkpoint import load_checkpoint, newest_intact_checkpoint, save_checkpoint
from ptmkit.train.dcp import is_dcp_checkpoint, load_dcp_checkpoint, save_dcp_checkpoint
from ptmkit.train.interrupt import StopFlag
from ptmkit.train.logging import MetricsLogger, plot_run, progress
from ptmkit.train.module import TrainingModule, bind_objective  # noqa: F401  (the engine's public names)
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig, build_scheduler


log = get(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer updates
    grad_accum: int = 1  # micro-batches per update
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where the device has it natively, else fp32)
    log_every: int = 10  # write a metrics.jsonl record every n steps
    eval_every: int = 200  # 0 = only at the end
    checkpoint_every: int = 500  # 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk (older ones are deleted)
    keep_steps: list[int] = field(default_factory=list)  # also checkpoint at these steps and never delete them
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
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train: precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        bad = [s for s in self.keep_steps if not isinstance(s, int) or not 0 < s <= self.steps]
        if bad:
            raise ConfigError(f"train: keep_steps must be steps of the run, 1..{self.steps}; got {bad}")
        if self.checkpoint_format not in ("auto", "safetensors", "dcp"):
            raise ConfigError(f"train: checkpoint_format must be auto, safetensors or dcp, got {self.checkpoint_format!r}")


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _add(sums: dict[str, float], metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v


class Trainer:
    """One training run. `run(resume)` = setup → (forward_backward → optimizer_step → log → evaluate → checkpoint)*.

    `evaluate(module) -> metrics` receives the TrainingModule; `keep_best` saves the best model by an eval metric;
    `on_step(t)` runs before optimizer step t (0-based), e.g. a layer-drop schedule. With `parallel` (a torchrun
    launch) the module is sharded/replicated/pipelined by ptmkit.parallel, every rank runs this loop on its slice of
    each global batch, metrics are averaged over the data-parallel ranks and written by rank 0, checkpoints are DCP.
    """

    def __init__(self, model: torch.nn.Module, objective, batches, run_dir: str | Path, cfg: TrainConfig,
                 optim_cfg: OptimConfig, sched_cfg: ScheduleConfig, *,
                 evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
                 keep_best: KeepBest | None = None, parallel: ParallelState | None = None,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 on_step: Callable[[int], None] | None = None, title: str | None = None):
        self.model, self.objective, self.batches, self.run_dir = model, objective, batches, Path(run_dir)
        self.cfg, self.optim_cfg, self.sched_cfg = cfg, optim_cfg, sched_cfg
        self.evaluate_fn, self.keep_best, self.parallel, self.on_step = evaluate, keep_best, parallel, on_step
        self.flops_per_token, self.peak_flops, self.title = flops_per_token, peak_flops, title
        self.main = parallel is None or parallel.is_main
        self.step = 0
        self.last_eval: dict[str, float] = {}
        self.totals = {"tokens": 0, "sequences": 0, "padded_tokens": 0, "data_s": 0.0, "compute_s": 0.0, "eval_s": 0.0}

    # ---- set-up -------------------------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        self.device = self.parallel.device if self.parallel is not None else torch.device(self.cfg.device)
        self.model.to(self.device)
        self.module = TrainingModule(self.model, self.objective)  # model (+ the objective's networks, if any)
        self.module.to(self.device)  # networks an objective built before the run (bound early) move too
        self.pipeline = prepare_training(self.module, self.parallel, self.cfg.activation_checkpointing,
                                         unused_parameters=self.on_step is not None)
        self.optimizer = build_optimizer(self.module, self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.sched_cfg, self.cfg.steps)
        self.precision = Precision(self.cfg.precision, self.device)
        fmt = self.cfg.checkpoint_format
        self.use_dcp = fmt == "dcp" or (fmt == "auto" and self.parallel is not None)
        if resume:
            self.resume_from(newest_intact_checkpoint(self.run_dir))  # verified; broken newer ones are named
        self.logger = MetricsLogger(self.run_dir, resume_step=self.step) if self.main else None
        if self.logger is not None and self.step == 0:
            self.logger.path.write_text("")  # a fresh run starts a fresh history

    def resume_from(self, ckpt: Path | None) -> None:
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if is_dcp_checkpoint(ckpt):
            state = load_dcp_checkpoint(ckpt, self.module, self.optimizer, self.scheduler, self.precision)
        elif self.parallel is not None:
            raise ConfigError(f"{ckpt} is a single-process checkpoint; a distributed run resumes from DCP checkpoints "
                              "(start the single-process run with --train.checkpoint_format dcp to move it)")
        else:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, self.precision,
                                    objective_module=self.module.aux)
        self.batches.load_state_dict(state["data"])
        self.step = state["step"]
        extra = state.get("extra") or {}
        self.totals.update(extra.get("totals", {}))
        self.last_eval = extra.get("last_eval", {})
        if self.keep_best is not None and "best" in extra:
            self.keep_best.load_state_dict(extra["best"])

    # ---- one step -----------------------------------------------------------------------------------------------
    def forward_backward(self) -> tuple[dict[str, float], int]:
        """cfg.grad_accum micro-batches, forward and backward; returns (summed metrics, tokens of the global batch)."""
        sums: dict[str, float] = {}
        ntok = 0
        dp = self.parallel.cfg.dp if self.parallel is not None else 1
        for _ in range(self.cfg.grad_accum):
            td = time.perf_counter()
            batch = _to_device(next(self.batches), self.device)
            self.totals["data_s"] += time.perf_counter() - td
            mask = batch.get("attention_mask")
            units = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))  # else e.g. triples
            ntok += int(mask.sum()) if mask is not None else units.numel()
            self.totals["sequences"] += units.shape[0] * dp
            self.totals["padded_tokens"] += units.numel() * dp
            with self.precision.autocast():
                if self.pipeline is not None:  # forward and backward of every micro-batch, through the stages
                    _add(sums, self.pipeline.step(batch)[1])
                    continue
                loss, metrics = self.module(batch)
            if dp > 1 and "predicted_tokens" in metrics:  # weight by this rank's share of the predicted tokens
                loss = loss * token_weight(metrics["predicted_tokens"], dp)
                metrics = {**metrics, "loss": float(loss.detach())}  # its mean over ranks: the global batch's
            self.precision.backward(loss / self.cfg.grad_accum)
            _add(sums, metrics)
        return sums, ntok * dp

    def optimizer_step(self) -> tuple[float, float]:
        """Unscale, clip, step, schedule; returns (gradient norm before clipping, the learning rate used)."""
        p = self.pipeline
        grad_norm, _ = self.precision.step(
            self.optimizer, self.module.parameters(), self.optim_cfg.grad_clip,
            group=p.group if p is not None else None,
            counted_elsewhere=p.module.counted_elsewhere() if p is not None else frozenset())
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return grad_norm, lr

    def log(self, sums: dict[str, float], ntok: int, elapsed: float, grad_norm: float, lr: float) -> dict[str, float]:
        record = {k: v / self.cfg.grad_accum for k, v in sums.items() if k != "predicted_tokens"}
        due = self.step % self.cfg.log_every == 0 or self.step == self.start + 1 or self.step == self.cfg.steps
        if self.parallel is not None and due:  # the same steps on every rank, so the collective matches up
            record = mean_over_ranks(record)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{lr:.2e}")
        if self.logger is not None and due:
            t = self.totals
            record.update(step=self.step, split="train", lr=lr, grad_norm=grad_norm,
                          skipped_steps=self.precision.skipped_steps, step_s=elapsed, tokens_per_s=ntok / elapsed,
                          data_fraction=t["data_s"] / max(1e-9, t["data_s"] + t["compute_s"]))
            if hasattr(self.batches, "epoch"):
                record["epoch"] = round(float(self.batches.epoch), 4)
            if self.flops_per_token and self.peak_flops:
                world = self.parallel.world_size if self.parallel is not None else 1
                record["mfu"] = self.flops_per_token * ntok / elapsed / (self.peak_flops * world)
            self.logger.log(record)
        return record

    def evaluate(self) -> None:
        t0 = time.perf_counter()
        self.last_eval = self.evaluate_fn(self.module)
        self.module.train()
        improved = self.keep_best is not None and self.keep_best.update(self.step, self.last_eval, self.model)
        if self.logger is not None:
            self.logger.log({"step": self.step, "split": "eval", **self.last_eval})
        self.bar.write(f"step {self.step} eval: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_eval.items())
                       + (" (best)" if improved else ""))
        self.totals["eval_s"] += time.perf_counter() - t0

    def checkpoint(self) -> None:
        extra = {"totals": self.totals, "last_eval": self.last_eval}
        if self.keep_best is not None:
            extra["best"] = self.keep_best.state_dict()
        args = (self.run_dir, self.step)
        if self.use_dcp:
            save_dcp_checkpoint(*args, self.module, self.optimizer, self.scheduler, self.precision,
                                self.batches.state_dict(), self.cfg.keep_last, extra=extra,
                                keep_steps=self.cfg.keep_steps)
        else:
            save_checkpoint(*args, self.model, self.optimizer, self.scheduler, self.precision,
                            self.batches.state_dict(), self.cfg.keep_last, extra=extra,
                            objective_module=self.module.aux, keep_steps=self.cfg.keep_steps)

    def _due(self, every: int) -> bool:
        return (every > 0 and self.step % every == 0) or self.step == self.cfg.steps

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        self.setup(resume)
        self.start = self.step
        if resume and self.main:
            log.info("resuming %s at step %d of %d", self.run_dir, self.step, self.cfg.steps)
        self.bar = progress(self.cfg.steps, self.start, desc=f"train {self.run_dir.name}",
                            enabled=self.cfg.progress_bar and self.main)
        stopped = False
        with StopFlag() as stop:
            while self.step < self.cfg.steps:
                if self.on_step is not None:
                    self.on_step(self.step)
                self.module.train()
                t0 = time.perf_counter()
                data_before = self.totals["data_s"]
                sums, ntok = self.forward_backward()
                grad_norm, lr = self.optimizer_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                self.step += 1
                self.totals["tokens"] += ntok
                self.totals["compute_s"] += elapsed - (self.totals["data_s"] - data_before)
                self.log(sums, ntok, elapsed, grad_norm, lr)
                if self.parallel is not None:  # Ctrl-C reaches every rank; all must stop together
                    stop.requested = any_rank(stop.requested)
                if self.evaluate_fn is not None and self._due(self.cfg.eval_every):
                    self.evaluate()
                if stop.requested:
                    self.checkpoint()
                    self.bar.write(f"interrupted: checkpoint saved at step {self.step}; continue with --resume")
                    stopped = True
                    break
                if self._due(self.cfg.checkpoint_every) or self.step in self.cfg.keep_steps:
                    self.checkpoint()
        return self.finish(stopped)

    def finish(self, stopped: bool) -> dict[str, Any]:
        self.bar.close()
        if self.logger is not None:
            self.logger.close()
            plot_run(self.run_dir, title=self.title)
        t = self.totals
        return {
            "steps": self.step, "interrupted": stopped, "eval": self.last_eval,
            "best": self.keep_best.state_dict() if self.keep_best is not None else None,
            "skipped_steps": self.precision.skipped_steps,
            "data_fraction": t["data_s"] / max(1e-9, t["data_s"] + t["compute_s"]),
            "tokens": t["tokens"], "sequences": t["sequences"], "padded_tokens": t["padded_tokens"],
            "train_s": t["data_s"] + t["compute_s"], "eval_s": t["eval_s"], "trained": self.module,
        }


def train(model: torch.nn.Module, objective, batches, run_dir: str | Path, cfg: TrainConfig, optim_cfg: OptimConfig,
          sched_cfg: ScheduleConfig, evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          resume: bool = False, flops_per_token: float | None = None, peak_flops: float | None = None,
          parallel: ParallelState | None = None, on_step: Callable[[int], None] | None = None,
          keep_best: KeepBest | None = None, title: str | None = None) -> dict[str, Any]:
    """Train for cfg.steps updates (continuing from the last checkpoint when resume=True); see Trainer."""
    return Trainer(model, objective, batches, run_dir, cfg, optim_cfg, sched_cfg, evaluate=evaluate,
                   keep_best=keep_best, parallel=parallel, flops_per_token=flops_per_token, peak_flops=peak_flops,
                   on_step=on_step, title=title).run(resume)
