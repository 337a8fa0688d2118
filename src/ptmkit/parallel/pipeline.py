"""Pipeline parallelism (GPipe: Huang et al. 2019; 1F1B: Narayanan et al. 2019, PipeDream-Flush) for decoder-only
language models trained with causal LM, on torch.distributed.pipelining.

Each pipeline rank keeps a contiguous share of the blocks (stage 0 also the embeddings, the last stage the final
norm and output layer); the other blocks are replaced by parameter-free placeholders, so every kept tensor keeps
its full-model name and distributed checkpoints load into any other layout. A step splits the batch into
micro-batches that flow through the stages: GPipe runs all forwards then all backwards; 1F1B interleaves them so a
stage holds at most `pp` micro-batches of activations. A tied output layer (GPT-2) lives on the first and the last
stage, and its gradient is summed between them after each backward (as Megatron-LM does), so both copies stay equal.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ptmkit.config import ConfigError


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of a task model (a causal LM wraps its backbone as `.backbone`), else the model itself."""
    return getattr(model, "backbone", model)


class _Skipped(nn.Module):
    """Stands in for a block another pipeline stage owns (no parameters, never called)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this block belongs to another pipeline stage")


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Blocks of `stage`: as equal as possible, earlier stages taking the remainder."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


class DecoderStage(nn.Module):
    """One stage of a causal LM. forward(input_ids) on the first stage, forward(hidden) on the others; the last
    stage returns logits. Children are named as in the TrainingModule (`model.…`) so checkpoint names match."""

    def __init__(self, lm: nn.Module, stage: int, pp: int):
        super().__init__()
        backbone = backbone_of(lm)
        # a backbone declares `supports_pipeline` when it has the layout a stage cuts: embeddings, `layers`,
        # optional rotary positions, `norm_f`, and a task model with `lm_head`
        if not getattr(backbone, "supports_pipeline", False) or not hasattr(lm, "lm_head"):
            raise ConfigError(f"pipeline parallelism supports causal LMs whose backbone declares supports_pipeline "
                              f"(GPT-2, LLaMA); this model is a {getattr(backbone, 'family', '?')} "
                              f"{type(lm).__name__} (set parallel.pp to 1)")
        self.first, self.last = stage == 0, stage == pp - 1
        self.owned = stage_layers(len(backbone.layers), pp, stage)
        self.tied = lm.tied
        for i in range(len(backbone.layers)):
            if i not in self.owned:
                backbone.layers[i] = _Skipped()
        if not self.first:
            backbone.embeddings.tok = None if not (self.last and self.tied) else backbone.embeddings.tok
            if getattr(backbone.embeddings, "pos", None) is not None:
                backbone.embeddings.pos = None
        if not self.last:
            backbone.norm_f = None
            lm.lm_head = None
        self.model = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = backbone_of(self.model)
        b, t = x.shape[0], x.shape[1]
        positions = torch.arange(t, device=x.device)[None].expand(b, t)
        if self.first:
            x = backbone.embeddings(x, positions, None, None)  # (B, T, H)
        rotary = backbone.rotary(positions, x.dtype) if backbone.rotary is not None else None
        for i in self.owned:
            x = backbone.layers[i](x, None, True, rotary, None, i)
        if not self.last:
            return x
        return self.model.lm_head(backbone.norm_f(x))  # (B, T, V)

    def counted_elsewhere(self) -> frozenset[int]:
        """The last stage's copy of a tied matrix: its gradient norm is counted once, on the first stage."""
        w = self.tied_weight()
        return frozenset({id(w)}) if (w is not None and self.last and not self.first) else frozenset()

    def tied_weight(self) -> torch.Tensor | None:
        """The output layer's weight shared with the first stage's embeddings (first and last stage), else None."""
        if not self.tied or not (self.first or self.last):
            return None
        return backbone_of(self.model).embeddings.tok.weight


class Pipeline:
    """The stage of this rank plus its schedule; `step(batch)` runs forward and backward of all micro-batches and
    returns (loss, metrics) on the last stage, (None, {}) elsewhere."""

    def __init__(self, trained: nn.Module, state, microbatches: int, schedule: str, device: torch.device):
        """Prunes `trained` to this rank's stage (self.module); call build() after parallelize(self.module)."""
        # the last stage scores logits itself: the objective must say how (`pipeline_loss(logits, labels)`)
        self.loss = getattr(trained.loss_fn, "pipeline_loss", None)
        if self.loss is None:
            raise ConfigError(f"pipeline parallelism needs an objective with a pipeline_loss (clm has one); this run "
                              f"uses {type(trained.loss_fn).__name__} (set parallel.pp to 1)")
        if trained.aux is not None:
            raise ConfigError("pipeline parallelism does not run objectives with auxiliary networks (set parallel.pp to 1)")
        pp = state.cfg.pp
        self.group = state.submesh("pp").get_group()
        self.stage_index = dist.get_rank(self.group)
        self.module = DecoderStage(trained.model, self.stage_index, pp)
        self.first, self.last = self.module.first, self.module.last
        self.tied_group = _first_last_groups(state.mesh) if self.module.tied else None
        self.pp, self.microbatches, self.schedule_name, self.device = pp, microbatches, schedule, device

    def build(self) -> "Pipeline":
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.stage = PipelineStage(self.module, self.stage_index, self.pp, self.device, group=self.group)
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[self.schedule_name]
        self.schedule = cls(self.stage, self.microbatches, loss_fn=self.loss)
        return self

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, float]]:
        if "document_ids" in batch or ("attention_mask" in batch and not bool(batch["attention_mask"].all())):
            raise ConfigError("pipeline parallelism needs unpadded, unmasked sequences: use data.boundary: cross")
        losses: list[torch.Tensor] = []
        if self.first:
            self.schedule.step(batch["input_ids"], target=batch["labels"] if self.last else None, losses=losses)
        elif self.last:
            self.schedule.step(target=batch["labels"], losses=losses)
        else:
            self.schedule.step()
        self._sum_tied_grad()
        if not self.last:
            return None, {}
        loss = torch.stack([l.detach() for l in losses]).mean()
        return loss, {"loss": float(loss), "predicted_tokens": float((batch["labels"] != -100).sum())}

    def _sum_tied_grad(self) -> None:
        """First and last stage hold the tied embedding/output matrix: add up its two gradients on both."""
        w = self.module.tied_weight()
        if w is None or self.tied_group is None:
            return
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        g = w.grad.to_local() if hasattr(w.grad, "to_local") else w.grad  # FSDP2: the same shard on both stages
        dist.all_reduce(g, group=self.tied_group)


def _first_last_groups(mesh):
    """For every pipeline (every combination of the other mesh coordinates) a process group of its first and last
    stage; returns this rank's. Every rank creates every group, in the same order, as new_group requires."""
    names = list(mesh.mesh_dim_names)
    ranks = mesh.mesh.movedim(names.index("pp"), -1).reshape(-1, mesh.mesh.shape[names.index("pp")])
    me, mine = dist.get_rank(), None
    for row in ranks.tolist():
        group = dist.new_group([row[0], row[-1]])
        if me in (row[0], row[-1]):
            mine = group
    return mine
