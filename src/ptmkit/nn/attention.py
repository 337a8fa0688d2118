"""Multi-head self- and cross-attention with grouped-query heads, rotary positions and KV caches.

Vaswani et al. 2017 (multi-head attention, encoder-decoder cross-attention); Ainslie et al. 2023 (GQA);
Shazeer 2019 (MQA). Kernels take a bool mask (True = may attend) or an additive float mask (e.g. T5's
relative position bias folded together with padding and causality by `add_bias`).
Dimension legend: B batch, T query length, S key length, H query heads, K key/value heads, D head dim.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.nn.feedforward import PrunableUnits
from ptmkit.nn.kernels import ATTENTION, eager_kernel, sdpa_kernel  # noqa: F401  (re-exported)
from ptmkit.nn.positions import apply_rotary


# Kernels live in ptmkit.nn.kernels (one file each); ATTENTION is their registry. The two dense functions are
# re-exported because analysis code and tests call them directly.
@dataclass
class AttentionConfig:
    hidden_size: int
    num_heads: int
    num_kv_heads: int | None = None  # None = num_heads (MHA); 1 = MQA; otherwise GQA
    head_dim: int | None = None  # None = hidden_size // num_heads
    bias: bool = True  # bias on q/k/v projections
    out_bias: bool = True
    dropout: float = 0.0
    kernel: str = "sdpa"
    scale: float | None = None  # logit scale; None = 1/sqrt(head_dim). T5 uses 1.0 (Raffel et al. 2020)
    kernel_options: dict[str, Any] = field(default_factory=dict)  # the kernel's own settings (window, features…)

    def __post_init__(self) -> None:
        check_positive("attention", hidden_size=self.hidden_size, num_heads=self.num_heads)
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        check_positive("attention", num_kv_heads=self.num_kv_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"attention: hidden_size {self.hidden_size} is not divisible by num_heads "
                    f"{self.num_heads}; change one of them (or set head_dim explicitly)"
                )
            self.head_dim = self.hidden_size // self.num_heads
        check_positive("attention", head_dim=self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"attention: num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads} "
                "(each key/value head serves an equal group of query heads)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"attention: dropout must be in [0, 1), got {self.dropout}")
        if self.kernel not in ATTENTION:
            raise ConfigError(f"attention: unknown kernel {self.kernel!r}; choose one of {sorted(ATTENTION)}")
        ATTENTION[self.kernel].parse_options(self.kernel_options)  # unknown or invalid options fail here, not mid-run
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"attention: scale must be positive (or None for 1/sqrt(head_dim)), got {self.scale}")


class KVCache:
    """Pre-allocated keys/values for incremental decoding: (layers, B, K, max_len, D) each.

    Pre-allocation avoids re-copying the whole cache at every generated token (torch.cat would). K is the most
    key/value heads of any layer: a layer with fewer (heads pruned, ptmkit.compress.prune.heads) uses the first ones.
    """

    def __init__(self, num_layers, batch, num_kv_heads, head_dim, max_len, dtype, device):
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # tokens already stored (same for every layer once a forward pass completes)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B,K,T,D) after the cached prefix; return all keys/values so far (B,K,S,D)."""
        start, end, heads = self.length, self.length + k.shape[2], k.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens > max_len {self.max_len}; allocate a larger cache")
        self.k[layer, :, :heads, start:end] = k
        self.v[layer, :, :heads, start:end] = v
        return self.k[layer, :, :heads, :end], self.v[layer, :, :heads, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (used when some sequences finish or for beam search)."""
        self.k, self.v = self.k[:, index], self.v[:, index]


class SelfAttention(PrunableUnits, nn.Module):
    """Fused-QKV self-attention. One matmul projects q, k and v: faster than three on small models.

    Its prunable units are the query heads (`keep_units`, Michel et al. 2019). With grouped-query attention a key/value
    head serves a group of g query heads; only whole groups can go (their key and value rows with them), since a
    kept group with fewer query heads would break the equal-group layout every kernel and the KV cache rely on.
    """

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        self.h, self.kv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        # Rows grouped per key/value head: [its g = h/kv query heads; its key; its value] (Megatron's layout), so a
        # contiguous block of rows — one tensor-parallel rank's shard — is a set of whole groups.
        # ptmkit.models.convert.base.fuse_qkv / split_qkv convert from / to separate q, k, v matrices.
        self.qkv = nn.Linear(cfg.hidden_size, (self.h + 2 * self.kv) * self.d, bias=cfg.bias)
        self.out = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.out_bias)
        self.scale = cfg.scale if cfg.scale is not None else 1.0 / math.sqrt(self.d)
        self.kernel = ATTENTION[cfg.kernel](cfg)  # a module: Linformer's projections and Performer's features live here

    def fused_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Which output rows of the fused projection are q, k and v: delta-tuning methods target them by these names
        (LoRA on "q" and "v" as in Hu et al. 2021) without the model giving up its one fused matmul."""
        g = self.h // self.kv
        groups = self.qkv.out_features // ((g + 2) * self.d)  # all key/value heads, or a tensor-parallel share
        rows = torch.arange(self.qkv.out_features).view(groups, g + 2, self.d)  # (K, g+2, D)
        return {"qkv": {"q": rows[:, :g].reshape(-1), "k": rows[:, g].reshape(-1), "v": rows[:, g + 1].reshape(-1)}}

    # ---- structured pruning (PrunableUnits): a unit is a query head ----------------------------------------------

    @property
    def num_units(self) -> int:
        return self.h

    def unit_slices(self, units: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
        """qkv rows of the key/value groups of heads `units` (whole groups, sorted) and out columns of the heads."""
        g = self.h // self.kv
        groups = units.view(-1, g)[:, 0] // g  # (K',)
        slots = groups[:, None] * (g + 2) + torch.arange(g + 2)  # (K', g+2): its g queries, its key, its value
        rows = slots[..., None] * self.d + torch.arange(self.d)  # (K', g+2, D)
        cols = units[:, None] * self.d + torch.arange(self.d)  # (H', D)
        out = {"qkv.weight": (0, rows.flatten()), "out.weight": (1, cols.flatten())}
        if self.qkv.bias is not None:
            out["qkv.bias"] = (0, rows.flatten())
        return out

    def _check_units(self, units: torch.Tensor) -> None:
        g = self.h // self.kv
        if units.numel() % g or not torch.equal(units.view(-1, g), units.view(-1, g)[:, :1] // g * g + torch.arange(g)):
            raise ValueError(f"grouped-query attention ({self.h} query heads in {self.kv} key/value groups of {g}) "
                             f"keeps whole groups only: heads {units.tolist()} split a group; keep all {g} query "
                             "heads of each kept group")
        if self.kernel.kind != "dense":  # efficient kernels may hold per-head state (Linformer's projections)
            raise ValueError(f"head pruning supports the dense attention kernels (sdpa, eager), not "
                             f"{self.cfg.kernel!r}: prune the heads of the model with kernel 'sdpa'")

    def _resized(self, n: int) -> None:
        g = self.h // self.kv
        self.h, self.kv = n, n // g
        # a config of its own: the model's blocks share one AttentionConfig, and other layers keep their heads
        self.cfg = dataclasses.replace(self.cfg, num_heads=self.h, num_kv_heads=self.kv)
        self.kernel = ATTENTION[self.cfg.kernel](self.cfg)  # a dense kernel is stateless: rebuilt for the new counts

    def forward(
        self,
        x: torch.Tensor,  # (B, T, hidden)
        mask: torch.Tensor | None = None,  # bool (B, 1, T|1, S), True = may attend
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos/sin (B|1, T, D)
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        g = self.h // self.kv  # query heads per key/value head
        # -1: the groups present here (all of them, or a tensor-parallel rank's share)
        y = self.qkv(x).view(b, t, -1, g + 2, self.d)  # (B, T, K, g+2, D)
        # split, not three slices: the backward of a slice zero-fills a whole (B, T, K, g+2, D) gradient per slice,
        # split's concatenates the three parts once (same values; the attention step of a ViT-sized block in
        # benchmarks/clip_step.py's model ran 309 -> 247 ms forward + backward, CPU)
        q, k, v = y.split([g, 1, 1], dim=3)
        q = q.reshape(b, t, -1, self.d).transpose(1, 2)  # (B, H, T, D)
        k = k.squeeze(3).transpose(1, 2)  # (B, K, T, D)
        v = v.squeeze(3).transpose(1, 2)  # (B, K, T, D)
        if rotary is not None:
            q, k = apply_rotary(q, k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
        prefix = self._modules.get("prefix")  # prefix-tuning (ptmkit.adapt.prefix): learned keys/values go first
        if prefix is not None and prefix.enabled:
            k, v, mask, is_causal = prefix.extend(k, v, mask, is_causal)  # (B, K, P+S, D)
        p = self.cfg.dropout if self.training else 0.0
        y = self.kernel(q, k, v, mask, is_causal and mask is None, p, self.scale)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, H*D)
        return self.out(y)


def build_mask(
    attention_mask: torch.Tensor | None,  # (B, S) 1 = token, 0 = padding (S counts cached tokens); or (B, T, S)
    q_len: int,
    kv_len: int,
    causal: bool,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """Turn a padding mask and causality into what the kernel needs: (bool mask (B,1,T,S) or None, is_causal).

    Without padding and without a cache the kernel's own causal path is used (fastest: no mask tensor).
    With a cache (S > T) the queries are the last T positions, so causality is offset by S - T.
    """
    if attention_mask is not None and attention_mask.dim() == 3:
        # A full (B, T, S) mask, e.g. packed documents that must not see each other.
        allowed = attention_mask.to(torch.bool)[:, None]  # (B, 1, T, S)
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, S)
        if causal:
            allowed = allowed & (k_pos <= q_pos)
        return allowed | (q_pos == k_pos), False  # every query sees at least itself (no NaN rows)
    keep = None if attention_mask is None else attention_mask.to(torch.bool)
    if keep is not None and not torch.compiler.is_exporting() and bool(keep.all()):
        # no padding: drop the mask so SDPA can pick its fastest kernel (not in an exported graph, which must serve
        # every batch, padded or not: ONNX export)
        keep = None
    if not causal:
        return (None if keep is None else keep[:, None, None, :]), False  # (B, 1, 1, S)
    if keep is None and (q_len == kv_len or q_len == 1):
        # square causal, or one new token that may see the whole cache
        return None, q_len == kv_len and q_len > 1
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if keep is not None:
        # A fully padded query row (left padding) would softmax over nothing and give NaN; let it see itself.
        allowed = (allowed & keep[:, None, None, :]) | (q_pos == k_pos)[None, None]  # (B, 1, T, S)
    return allowed, False


def add_bias(mask: torch.Tensor | None, is_causal: bool, bias: torch.Tensor) -> torch.Tensor:
    """Fold padding/causality (from build_mask) and an additive bias (B|1, H, T, S) into one float mask.

    Disallowed positions get the dtype's most negative finite value rather than -inf, so a row with nothing
    to attend to softmaxes to uniform weights instead of NaN (as transformers does).
    """
    t, s = bias.shape[-2:]
    neg = torch.finfo(bias.dtype).min
    if is_causal:
        causal = torch.ones(t, s, dtype=torch.bool, device=bias.device).tril(diagonal=s - t)  # (T, S)
        if mask is None or mask.dtype == torch.bool:
            mask = causal if mask is None else mask & causal
        else:
            mask = mask.masked_fill(~causal, neg)
    if mask is None:
        return bias
    if mask.dtype != torch.bool:
        return bias + mask
    return torch.where(mask, bias, neg)  # (B|1, H, T, S)


class CrossKVCache:
    """Encoder keys/values of every cross-attention layer, projected once and reused for each generated token.

    Valid for one encoder output: build a new one (or `clear()`) for a new source batch.
    """

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __contains__(self, layer: int) -> bool:
        return layer in self.kv

    def clear(self) -> None:
        self.kv.clear()

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (finished sequences, beam search)."""
        self.kv = {i: (k[index], v[index]) for i, (k, v) in self.kv.items()}


class CrossAttention(nn.Module):
    """Encoder-decoder attention (Vaswani et al. 2017 §3.2.3): queries from the decoder, keys/values from the
    encoder output ("memory"). q and the fused kv have separate projections because they read different inputs.
    """

    def __init__(self, cfg: AttentionConfig, memory_size: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.h, self.kv_heads, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.hidden_size, self.h * self.d, bias=cfg.bias)
        self.kv = nn.Linear(memory_size or cfg.hidden_size, 2 * self.kv_heads * self.d, bias=cfg.bias)  # rows [k; v]
        self.out = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.out_bias)
        self.scale = cfg.scale if cfg.scale is not None else 1.0 / math.sqrt(self.d)
        # Efficient kernels are for long self-attention; cross-attention reads the encoder output densely.
        kernel = ATTENTION[cfg.kernel] if ATTENTION[cfg.kernel].kind == "dense" else ATTENTION["sdpa"]
        self.kernel = kernel(cfg)

    def fused_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Rows of the fused key/value projection: [k; v] (see SelfAttention.fused_parts)."""
        n = self.kv.out_features // 2
        return {"kv": {"k": torch.arange(n), "v": torch.arange(n, 2 * n)}}

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, _ = memory.shape
        k, v = self.kv(memory).chunk(2, dim=-1)  # (B, S, K*D) each
        k = k.view(b, s, self.kv_heads, self.d).transpose(1, 2)  # (B, K, S, D)
        v = v.view(b, s, self.kv_heads, self.d).transpose(1, 2)  # (B, K, S, D)
        return k, v

    def forward(
        self,
        x: torch.Tensor,  # (B, T, hidden) decoder states
        memory: torch.Tensor | None,  # (B, S, memory_size) encoder output; may be None once cached
        mask: torch.Tensor | None = None,  # bool (B, 1, 1|T, S) True = may attend, or additive float
        cache: CrossKVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)  # (B, H, T, D)
        if cache is not None and layer in cache:
            k, v = cache.kv[layer]
        else:
            if memory is None:
                raise ValueError("cross-attention needs the encoder output (memory) when nothing is cached")
            k, v = self.project_memory(memory)
            if cache is not None:
                cache.kv[layer] = (k, v)
        p = self.cfg.dropout if self.training else 0.0
        y = self.kernel(q, k, v, mask, False, p, self.scale)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, H*D)
        return self.out(y)
