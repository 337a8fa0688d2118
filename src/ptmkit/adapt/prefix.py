"""Prefix-tuning and P-tuning v2: learned keys and values placed before the sequence in every self-attention layer.

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation": P virtual tokens whose per-layer
keys/values come from a small table through a reparameterisation MLP (Embedding(P, kv) -> Linear -> tanh -> Linear
to layers x 2 x kv), which makes training stable; after training only its output is needed, so `bake` replaces the
MLP by the table it computes ("removable after training"). Liu et al. 2022, "P-Tuning v2": the same deep prompts
trained directly, without the MLP. The layout is PEFT's (one row per virtual token, [k, v] of each layer in turn),
and so is the geometry: in a decoder the prefix acts as P cached tokens, so the real tokens' positions start at P.

Not identity at initialisation (no zero-init exists for attention over extra keys). Not mergeable. Self-attention
layers only: cross-attention is left as it is, and efficient attention kernels (which assume keys = queries) refuse.

Dimension legend: B batch, K key/value heads, P virtual tokens, S keys, T queries, D head dim, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError
from ptmkit.nn.attention import ATTENTION, SelfAttention

ATTR = "prefix"  # on each SelfAttention: read by its forward
ENCODER = "prefix_encoder"  # on the model: computes every layer's prefix once per forward


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 20  # prefix length: key/value pairs prepended in every layer
    projection: bool = True  # Li & Liang's reparameterisation MLP; False: the table is trained directly
    projection_hidden: int = 512  # the MLP's width (Li & Liang use 512 for GPT-2 medium)
    targets: list[str] = field(default_factory=lambda: ["attn"])  # self-attention modules
    exclude: list[str] = field(default_factory=list)  # module-name patterns left out (e.g. a layer index)

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"prefix: num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.projection_hidden < 1:
            raise ConfigError(f"prefix: projection_hidden must be >= 1, got {self.projection_hidden}")


@dataclass
class PTuningV2Config(PrefixConfig):
    projection: bool = False


class PrefixEncoder(base.Delta):
    """The prefixes of all L layers: (P, L * 2 * K * D), from a table or the reparameterisation MLP."""

    def __init__(self, cfg: PrefixConfig, layers: int, kv_dim: int, like: torch.Tensor):
        super().__init__()
        self.hook = "around"  # computed before the model's forward
        self.layers, self.kv_dim = layers, kv_dim
        opts = dict(dtype=like.dtype, device=like.device)
        width = kv_dim if cfg.projection else layers * 2 * kv_dim
        self.embedding = nn.Embedding(cfg.num_virtual_tokens, width, **opts)  # N(0, 1), as PEFT's
        self.mlp = nn.Sequential(nn.Linear(kv_dim, cfg.projection_hidden, **opts), nn.Tanh(),
                                 nn.Linear(cfg.projection_hidden, layers * 2 * kv_dim, **opts)) if cfg.projection else None
        # this forward's prefixes, set by the model's pre-hook; a plain attribute (a Parameter assigned to a module
        # attribute would otherwise be registered as a second parameter)
        object.__setattr__(self, "table", None)

    def compute(self) -> torch.Tensor:
        t = self.embedding.weight  # (P, width)
        return self.mlp(t) if self.mlp is not None else t  # (P, L*2*K*D)

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.parameters())  # bumped by every in-place update (an optimizer step)

    def before(self, module, args, kwargs):
        # once per forward of the model; each layer reads its slice. It is kept after the forward: a checkpointed
        # block recomputed in the backward pass must read the very same table
        object.__setattr__(self, "table", self.compute())
        object.__setattr__(self, "table_version", self._weights_version())

    def current(self) -> torch.Tensor:
        """This forward's table, or a fresh one when the weights changed since (or outside the model's forward)."""
        if self.table is not None and getattr(self, "table_version", None) == self._weights_version():
            return self.table
        return self.compute()

    def __getstate__(self):  # copies and pickles leave the transient table (and its autograd graph) behind
        state = dict(super().__getstate__())
        state["table"] = None
        return state


class PrefixSite(base.Delta):
    """One self-attention layer's view of the prefix: its keys and values, and the masks widened for them."""

    hook = None  # SelfAttention.forward calls extend()

    def __init__(self, encoder: PrefixEncoder, layer: int, heads: int, head_dim: int):
        super().__init__()
        object.__setattr__(self, "encoder", encoder)  # a reference, not a child: the model owns the encoder
        self.layer, self.heads, self.head_dim = layer, heads, head_dim

    @property
    def length(self) -> int:
        return self.encoder.embedding.num_embeddings  # P

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        table = enc.current()
        n = enc.kv_dim
        k = table[:, 2 * self.layer * n:(2 * self.layer + 1) * n]  # (P, K*D)
        v = table[:, (2 * self.layer + 1) * n:(2 * self.layer + 2) * n]  # (P, K*D)
        shape = (table.shape[0], self.heads, self.head_dim)
        return k.reshape(shape).transpose(0, 1), v.reshape(shape).transpose(0, 1)  # (K, P, D) each

    def extend(self, k, v, mask, is_causal):
        """Keys/values (B, K, S, D) -> (B, K, P+S, D); the mask lets every query see every prefix position."""
        pk, pv = self.kv()
        b, p = k.shape[0], pk.shape[1]
        k = torch.cat([pk.to(k.dtype).expand(b, -1, -1, -1), k], dim=2)  # (B, K, P+S, D)
        v = torch.cat([pv.to(v.dtype).expand(b, -1, -1, -1), v], dim=2)
        if mask is None:
            if not is_causal:
                return k, v, None, False
            t = s = k.shape[2] - p  # the kernel's own causal path had square attention
            causal = torch.ones(t, s, dtype=torch.bool, device=k.device).tril()  # (T, S)
            mask = torch.cat([torch.ones(t, p, dtype=torch.bool, device=k.device), causal], dim=-1)[None, None]
            return k, v, mask, False
        lead = torch.ones(*mask.shape[:-1], p, dtype=torch.bool, device=mask.device)
        if mask.dtype != torch.bool:
            lead = torch.zeros(*mask.shape[:-1], p, dtype=mask.dtype, device=mask.device)  # additive: 0 = allowed
        return k, v, torch.cat([lead, mask], dim=-1), is_causal


def apply(model: nn.Module, cfg: PrefixConfig, name: str = "prefix") -> nn.Module:
    sites = base.find_sites(model, cfg.targets, types=(SelfAttention,), exclude=cfg.exclude, method=name,
                            parts=False)
    for s in sites:
        if ATTENTION[s.module.cfg.kernel].kind != "dense":
            raise ConfigError(f"{name}: {s.name} uses the efficient attention kernel {s.module.cfg.kernel!r}, which "
                              "assumes as many keys as queries; prefixes need a dense kernel (sdpa or eager)")
    widths = {(s.module.kv, s.module.d) for s in sites}
    if len(widths) != 1:
        raise ConfigError(f"{name}: the target layers differ in key/value width {sorted(widths)}; target one stack")
    heads, head_dim = widths.pop()
    like = next(model.parameters())
    base.register(model, name, cfg)
    encoder = PrefixEncoder(cfg, len(sites), heads * head_dim, like)
    base.attach(base.Site("", model), ENCODER, encoder)
    for i, s in enumerate(sites):
        base.attach(s, ATTR, PrefixSite(encoder, i, heads, head_dim))
    return model


def apply_ptuning_v2(model: nn.Module, cfg: PTuningV2Config) -> nn.Module:
    return apply(model, cfg, "ptuning-v2")


def bake(model: nn.Module) -> nn.Module:
    """Replace the reparameterisation MLP by the table it computes (Li & Liang §4.3: only the prefix is kept)."""
    encoder = getattr(model, ENCODER, None)
    if encoder is None:
        raise ConfigError("bake: this model carries no prefix")
    if encoder.mlp is not None:
        with torch.no_grad():
            table = encoder.compute().detach().clone()
        encoder.embedding = nn.Embedding.from_pretrained(table, freeze=False)
        encoder.mlp = None
    return model
