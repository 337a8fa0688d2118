"""Sparse Mixture-of-Experts feed-forward: a learned router sends each token to its top-k of E expert FFNs, so the
parameters grow with E while the compute per token stays that of k FFNs. Shazeer et al. 2017 ("Outrageously Large
Neural Networks"), GShard (Lepikhin et al. 2020), Switch Transformer (Fedus et al. 2021), ST-MoE (Zoph et al. 2022).

Routing, as in Switch §2.1-2.2 and GShard (Algorithm 1):
  logits = x W_r (in float32: Switch §2.4 "selective precision"), p = softmax(logits)
  each token picks its top-k experts; gate = p_i (raw, Switch top-1) or p_i / sum_topk p (renormalised, GShard top-2,
  Mixtral); y = sum_k gate_k * expert_k(x).
  Each expert takes at most C = ceil(capacity_factor * S * k / E) tokens per routing group of S tokens (capped at S).
  Slots are filled first-come-first-served in token order, all first choices before any second choice (GShard); a
  token beyond capacity is *dropped*: this layer outputs 0 for it, so the block's residual carries it unchanged.

Losses stored after each forward (collected by ptmkit.train.loop.TrainingModule):
  aux_loss = E * sum_i f_i * P_i   (Switch eq. 4; f_i = share of the top-k assignments routed to expert i, before
             capacity; P_i = mean router probability of expert i; 1.0 at uniform routing, E when collapsed)
  z_loss   = mean_tokens logsumexp(logits)^2   (ST-MoE §3 router z-loss; keeps router logits small and stable)

Dimension legend: B batch, T length, H hidden size, F expert intermediate size, E experts, K experts per token,
G routing groups, S tokens per group, C capacity (slots per expert and group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError, from_dict
from ptmkit.nn.feedforward import get_activation

ROUTING_GROUPS = ("batch", "sequence")


@dataclass
class MoEConfig:
    """A sparse feed-forward layer's settings (the defaults are Switch Transformer's, Fedus et al. 2021)."""

    num_experts: int = 8  # E
    top_k: int = 1  # K experts per token: 1 = Switch; 2 = GShard / Mixtral
    every: int = 2  # which blocks are sparse: layer i (0-based) when (i + 1) % every == 0; Switch: 2; Mixtral: 1
    intermediate_size: int | None = None  # each expert's F; None = the model's dense intermediate_size
    capacity_factor: float = 1.25  # training capacity C = ceil(cf * S * K / E) tokens per expert (Switch §2.2)
    eval_capacity_factor: float = 2.0  # at evaluation (fewer drops than training); >= E / K: no token dropped
    normalize_gates: bool | None = None  # None: raw p_i for top-1 (Switch), renormalised over the top-k for k > 1
    router_jitter: float = 0.0  # multiply router inputs by U(1 - eps, 1 + eps) in training (Switch; 0 = off)
    aux_loss_coef: float = 0.01  # alpha of the load-balancing loss (Switch §2.2: 1e-2)
    z_loss_coef: float = 0.001  # c_z of the router z-loss (ST-MoE: 1e-3)
    routing_groups: str = "batch"  # capacity per "batch" (all tokens of a forward) or per "sequence" (HF Switch)

    def __post_init__(self) -> None:
        where = "MoEConfig"
        if self.num_experts < 2:
            raise ConfigError(f"{where}: num_experts must be >= 2 (one expert is a dense FFN), got {self.num_experts}")
        if self.top_k < 1:
            raise ConfigError(f"{where}: top_k must be >= 1 (experts per token), got {self.top_k}")
        if self.top_k > self.num_experts:
            raise ConfigError(
                f"{where}: top_k {self.top_k} selects more experts than exist (num_experts {self.num_experts}); "
                f"use top_k <= {self.num_experts} or raise num_experts"
            )
        if self.every < 1:
            raise ConfigError(f"{where}: every must be >= 1 (1 = every layer sparse, 2 = every other), "
                              f"got {self.every}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ConfigError(f"{where}: intermediate_size must be positive or null, got {self.intermediate_size}")
        for name in ("capacity_factor", "eval_capacity_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}: {name} must be > 0 (1.0 = exactly the balanced share), "
                                  f"got {getattr(self, name)}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{where}: {name} must be >= 0 (0 turns the loss off), got {getattr(self, name)}")
        if not 0.0 <= self.router_jitter < 1.0:
            raise ConfigError(f"{where}: router_jitter must be in [0, 1), got {self.router_jitter}")
        if self.routing_groups not in ROUTING_GROUPS:
            raise ConfigError(f"{where}: routing_groups must be one of {list(ROUTING_GROUPS)}, "
                              f"got {self.routing_groups!r}")
        if self.normalize_gates and self.top_k == 1:
            raise ConfigError(
                f"{where}: normalize_gates with top_k 1 makes every gate 1.0, so the task loss never reaches the "
                "router; leave normalize_gates null (raw gate p_i, as Switch) or use top_k >= 2"
            )

    @property
    def renormalise(self) -> bool:
        return self.top_k > 1 if self.normalize_gates is None else self.normalize_gates

    def sparse_layer(self, i: int) -> bool:
        """Whether block i (0-based) gets the sparse FFN: blocks every-1, 2*every-1, ... (HF Switch's sparse_step)."""
        return (i + 1) % self.every == 0


def resolve_moe(where: str, value: MoEConfig | dict[str, Any] | None, num_layers: int) -> MoEConfig | None:
    """A model config's `moe` field as a MoEConfig (a mapping is built with from_dict's checks), or None = dense."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = from_dict(MoEConfig, value, where=f"{where}.moe")
    if not isinstance(value, MoEConfig):
        raise ConfigError(f"{where}.moe: expected a mapping of MoEConfig fields or null, got {value!r}")
    if value.every > num_layers:
        raise ConfigError(f"{where}.moe: every {value.every} > num_layers {num_layers} leaves no sparse layer; "
                          f"use every <= {num_layers}")
    return value


class SparseMoE(nn.Module):
    """Top-k routed experts in place of a block's dense FFN (Switch Transformer layer; Fedus et al. 2021, Fig. 2).

    Experts are batched weights w_in (E, H, F) [(E, H, 2F) gated] and w_out (E, F, H); tokens are scattered into an
    (E, G*C, H) slot buffer and run through two bmm's, so there is no Python loop over tokens or experts. Gated
    experts (SwiGLU, Mixtral) keep GatedMLP's layout: columns of w_in alternate gate_f, up_f.

    After each forward the module holds `aux_loss`, `z_loss` (scalars with gradient; None before a forward) and
    `stats` = {"expert_fraction": (E,) share of assignments per expert before capacity, "dropped_fraction": share
    of assignments dropped by capacity}.
    """

    bias_names = ("b_in", "b_out")  # exempt from weight decay like every other bias (train/optim.py)

    def __init__(self, cfg: MoEConfig, hidden: int, intermediate: int, activation: str = "gelu", bias: bool = True,
                 gated: bool = False, dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        e, f = cfg.num_experts, cfg.intermediate_size or intermediate
        self.num_experts, self.top_k, self.hidden, self.intermediate, self.gated = e, cfg.top_k, hidden, f, gated
        self.router = nn.Linear(hidden, e, bias=False)  # W_r (E, H); applied in float32
        width = 2 * f if gated else f
        self.w_in = nn.Parameter(torch.empty(e, hidden, width))  # (E, H, F) or (E, H, 2F)
        self.w_out = nn.Parameter(torch.empty(e, f, hidden))  # (E, F, H)
        self.b_in = nn.Parameter(torch.zeros(e, width)) if bias else None  # (E, F)
        self.b_out = nn.Parameter(torch.zeros(e, hidden)) if bias else None  # (E, H)
        self.act = get_activation(activation)
        self.drop = nn.Dropout(dropout)
        for w in (self.router.weight, self.w_in, self.w_out):  # each expert initialised like the dense FFN it replaces
            nn.init.normal_(w, std=init_std)
        self.clear_router_state()

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"experts={c.num_experts}, top_k={c.top_k}, hidden={self.hidden}, intermediate={self.intermediate}, "
                f"gated={self.gated}, capacity_factor={c.capacity_factor}/{c.eval_capacity_factor} (train/eval)")

    # the auxiliary-loss protocol (ptmkit.nn.auxiliary): the training module resets and collects MoE layers
    # without naming them
    def reset_auxiliary(self) -> None:
        self.clear_router_state()

    @classmethod
    def collect_auxiliary(cls, layers) -> tuple[torch.Tensor | None, dict[str, float]]:
        return collect_moe(tuple(layers))

    def clear_router_state(self) -> None:
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def capacity(self, tokens_per_group: int) -> int:
        """C = ceil(capacity_factor * S * K / E) (Switch eq. 3, per routing group), capped at S: an expert can
        receive each token at most once, so S slots already drop nothing."""
        cf = self.cfg.capacity_factor if self.training else self.cfg.eval_capacity_factor
        # the 1e-9 keeps a product that lands on an integer in exact arithmetic (0.1 * 30 = 3.0000000000000004) there
        c = math.ceil(cf * tokens_per_group * self.top_k / self.num_experts - 1e-9)
        return max(1, min(c, tokens_per_group))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits and probabilities in float32 (Switch §2.4), with optional multiplicative jitter."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.float()
            if self.training and self.cfg.router_jitter > 0:
                eps = self.cfg.router_jitter
                h = h * torch.empty_like(h).uniform_(1.0 - eps, 1.0 + eps)
            logits = F.linear(h, self.router.weight.float())  # (G, S, E)
            return logits, logits.softmax(dim=-1)

    def experts(self, buf: torch.Tensor) -> torch.Tensor:
        """All experts on their slots at once: (E, M, H) -> (E, M, H)."""
        h = torch.bmm(buf, self.w_in)  # (E, M, F) or (E, M, 2F)
        if self.b_in is not None:
            h = h + self.b_in[:, None, :].to(h.dtype)
        if self.gated:
            # columns alternate gate_f, up_f (as GatedMLP's rows); de-interleaved by one copy of the activations.
            # GatedMLP's copy-free path (two GEMMs over every other weight row) has no twin here: the interleave
            # is along w_in's unit-stride dimension, so w_in[..., 0::2] has no unit stride and bmm would copy the
            # weight instead (E x H x F, forward and backward) — the copy moves, it does not go.
            gate, up = h.unflatten(-1, (-1, 2)).movedim(-1, 0).contiguous().unbind(0)  # (E, M, F) each
            h = self.act(gate) * up  # (E, M, F)
        else:
            h = self.act(h)
        y = torch.bmm(self.drop(h), self.w_out)  # (E, M, H)
        if self.b_out is not None:
            y = y + self.b_out[:, None, :].to(y.dtype)
        return y  # (E, M, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, hdim = x.shape
        e, k = self.num_experts, self.top_k
        g = b if self.cfg.routing_groups == "sequence" else 1
        s = b * t // g
        xs = x.reshape(g, s, hdim)  # (G, S, H)
        logits, probs = self.route(xs)  # (G, S, E) float32
        top_p, top_e = probs.topk(k, dim=-1)  # (G, S, K)
        gates = top_p / top_p.sum(-1, keepdim=True) if self.cfg.renormalise else top_p  # (G, S, K)

        # GShard priority: all first choices (in token order) claim slots before any second choice
        choice = top_e.transpose(1, 2).reshape(g, k * s)  # (G, K*S) expert of each assignment
        onehot = F.one_hot(choice, e)  # (G, K*S, E)
        pos = onehot.cumsum(dim=1).gather(2, choice.unsqueeze(-1)).squeeze(-1) - 1  # (G, K*S) slot in its expert
        cap = self.capacity(s)
        keep = pos < cap  # (G, K*S) False = dropped by capacity
        group = torch.arange(g, device=x.device)[:, None]  # (G, 1)
        trash = g * e * cap  # one spare row receives every dropped assignment and is never read back
        slot = torch.where(keep, (group * e + choice) * cap + pos, trash).flatten()  # (G*K*S,) in (G, E, C) order

        # dispatch: scatter token copies into the (G, E, C) slot buffer; empty slots stay zero
        src = xs.unsqueeze(1).expand(g, k, s, hdim).reshape(g * k * s, hdim)  # (G*K*S, H)
        buf = xs.new_zeros(trash + 1, hdim).index_copy(0, slot, src)[:trash]  # (G*E*C, H)
        buf = buf.view(g, e, cap, hdim).transpose(0, 1).reshape(e, g * cap, hdim)  # (E, G*C, H)
        y = self.experts(buf)  # (E, G*C, H)
        y = y.view(e, g, cap, hdim).transpose(0, 1).reshape(trash, hdim)  # (G*E*C, H)
        y = torch.cat([y, y.new_zeros(1, hdim)])  # (G*E*C + 1, H): the trash row reads back as 0

        # combine: gather each assignment's expert output, weight by its gate, sum over the K choices
        out = y[slot].view(g, k, s, hdim)  # (G, K, S, H)
        w = (gates.transpose(1, 2) * keep.view(g, k, s)).unsqueeze(-1)  # (G, K, S, 1) gate, 0 when dropped
        out = (out * w.to(out.dtype)).sum(1)  # (G, S, H)

        self._store_losses(logits, probs, onehot, keep)
        return out.reshape(b, t, hdim).to(x.dtype)  # (B, T, H)

    def _store_losses(self, logits, probs, onehot, keep) -> None:
        e = self.num_experts
        frac = onehot.float().mean(dim=1)  # (G, E) f_i: share of the assignments, before capacity (sums to 1)
        mean_p = probs.mean(dim=1)  # (G, E) P_i
        self.aux_loss = e * (frac * mean_p).sum(-1).mean()  # Switch eq. 4, averaged over routing groups
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()  # ST-MoE router z-loss
        self.stats = {"expert_fraction": frac.mean(0).detach(), "dropped_fraction": (~keep).float().mean().detach()}

    def router_loss(self) -> torch.Tensor:
        """This layer's weighted auxiliary loss: aux_loss_coef * load balancing + z_loss_coef * z-loss."""
        return self.cfg.aux_loss_coef * self.aux_loss + self.cfg.z_loss_coef * self.z_loss


def moe_layers(module: nn.Module) -> tuple[SparseMoE, ...]:
    """Every SparseMoE inside `module` (empty for dense models)."""
    return tuple(m for m in module.modules() if isinstance(m, SparseMoE))


def collect_moe(layers: tuple[SparseMoE, ...]) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The summed weighted router losses of the layers that ran in the last forward, and their statistics as floats
    (means over layers; expert-fraction max/min over every layer and expert). One device sync for all metrics."""
    ran = [m for m in layers if m.aux_loss is not None]
    if not ran:
        return None, {}
    total = sum(m.router_loss() for m in ran)
    aux = torch.stack([m.aux_loss.detach() for m in ran]).mean()
    z = torch.stack([m.z_loss.detach() for m in ran]).mean()
    dropped = torch.stack([m.stats["dropped_fraction"] for m in ran]).mean()
    fractions = torch.cat([m.stats["expert_fraction"] for m in ran])
    values = torch.stack([total.detach().float(), aux, z, dropped, fractions.max(), fractions.min()]).tolist()
    names = ("moe_router_loss", "moe_aux_loss", "moe_z_loss", "moe_dropped_fraction", "moe_expert_fraction_max",
             "moe_expert_fraction_min")
    return total, dict(zip(names, values))
