"""Performer attention, FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers", ICLR): an unbiased
estimate of softmax attention from positive orthogonal random features, in O(T F D) time and O(T F) memory.

    exp(q.k) = E_w[phi(q) phi(k)],  phi(x) = exp(W x - |x|^2 / 2) / sqrt(F),  W (F, D) orthogonal rows   (paper §2.3)

with q and k scaled by scale^(1/2) each so that q.k carries the layer's logit scale. Rows of W are drawn in blocks
of D mutually orthogonal Gaussian directions with chi-distributed norms (paper §2.4), which lowers the variance.
Numerical stabilisation (as the reference implementation): every query's features are divided by their own maximum
and all keys' features by one shared maximum (per batch row and head); both factors cancel in the attention ratio.
Bidirectional attention runs through ptmkit.nn.kernels.recompute (no (T x F) feature map is kept: the backward
pass recomputes the features chunk by chunk); the keys' shared stabiliser is found in a first pass without gradient.
Causal attention uses the chunked prefix sums of ptmkit.nn.kernels.linear (within-chunk masked quadratic term,
cumulative (F x D) states across chunks).
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length (= T), D head dim,
F number of random features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, expand_kv, key_padding
from ptmkit.nn.kernels.linear import FeatureSpec, check_chunk, linear_attention, warn_no_dropout
from ptmkit.nn.kernels.recompute import chunk_rows, summary_attention, wide


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(F, D) random matrix whose rows come in blocks of D mutually orthogonal rows, each row's norm chi(D)-distributed
    like a Gaussian vector's (Choromanski et al. 2021 §2.4, "regularised" ORF: marginally each row is N(0, I_D))."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):  # a handful of D x D blocks, not a loop over tokens
        g = torch.randn(dim, dim, generator=generator)
        qmat, r = torch.linalg.qr(g)  # (D, D) orthonormal columns
        # sign fix (Mezzadri 2007): without it LAPACK's Householder QR biases the columns' signs (not Haar), and the
        # estimate of exp(q.k) is biased
        qmat = qmat * torch.sign(torch.diagonal(r))[None, :]
        blocks.append(qmat.T)
    w = torch.cat(blocks, dim=0)[:num_features]  # (F, D) unit rows
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1)  # (F,) chi(D)
    return w * norms[:, None]


@dataclass
class PerformerOptions:
    num_features: int = 256  # F random features per head (the paper uses F ~ D log D; more = lower variance)
    redraw_every: int = 0  # 0 = fixed features; n = draw new features every n training forward passes (paper §4)
    seed: int | None = None  # None = draw from the global torch RNG at build (a different draw per layer); int = fixed
    chunk: int = 64  # tokens per chunk of the causal prefix sums
    eps: float = 1e-12  # floor of the normaliser (only reached when every feature of a query underflows)

    def __post_init__(self) -> None:
        if self.num_features < 1:
            raise ConfigError(f"attention kernel 'performer': num_features must be >= 1, got {self.num_features}; the "
                              "estimate's variance falls as 1/num_features (256 is a good default for head_dim 64)")
        if self.redraw_every < 0:
            raise ConfigError(f"attention kernel 'performer': redraw_every must be >= 0 (0 = never redraw), got "
                              f"{self.redraw_every}")
        check_chunk("performer", self.chunk)
        if not self.eps > 0:
            raise ConfigError(f"attention kernel 'performer': eps must be > 0, got {self.eps}")


class Performer(AttentionKernel):
    """FAVOR+ with positive orthogonal random features; bidirectional and causal, key padding supported.

    The features W live in a buffer (saved with the model), so a saved model reproduces its outputs exactly; with
    redraw_every > 0 they are redrawn from a generator seeded by (a seed drawn at build, redraw count), both buffers
    too, so a resumed run redraws the same features. Attention dropout is not applied (there is no attention matrix).
    """

    Options = PerformerOptions
    kind = "approximate"
    causal = True
    name = "performer"

    def __init__(self, cfg):
        super().__init__(cfg)
        warn_no_dropout(self.name, cfg.dropout)
        o = self.options
        if o.seed is None:
            base = int(torch.randint(0, 2 ** 62, (1,)))  # from the global RNG, like the weights' initialisation
        else:
            base = o.seed
        self.register_buffer("base_seed", torch.tensor(base, dtype=torch.long))
        self.register_buffer("redraws", torch.tensor(0, dtype=torch.long))  # how many times features were redrawn
        self.register_buffer("calls", torch.tensor(0, dtype=torch.long))  # training forward passes so far
        self.register_buffer("features", self._draw(0))  # (F, D)

    def _draw(self, count: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(self.base_seed) + count)
        return orthogonal_gaussian(self.options.num_features, self.head_dim, g)  # (F, D)

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw the next set of random features (Choromanski et al. §4: periodic redrawing helps training)."""
        self.redraws += 1
        self.features.copy_(self._draw(int(self.redraws)))

    def log_features(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """log phi(x) up to the 1/sqrt(F) constant: (B, H, L, F) for x (B, H, L, D) already scaled by scale^(1/2);
        w (F, D): the features to use (default: the buffer)."""
        w = self.features if w is None else w
        wx = x @ w.to(x.dtype).T  # (B, H, L, F); x is float even when the model was cast to bf16
        return wx - x.square().sum(dim=-1, keepdim=True) / 2

    def feature_map(self, x: torch.Tensor, is_query: bool, keep: torch.Tensor | None = None,
                    w: torch.Tensor | None = None, stab: torch.Tensor | None = None) -> torch.Tensor:
        """phi(x) (B, H, L, F) for x (B, H, L, D) already scaled by scale^(1/2), stabilised by a cancelling factor.
        w: the features (default: the buffer); stab: the keys' stabiliser when it was found beforehand over all
        keys (key_stabiliser), as the chunked pass needs."""
        wx = self.log_features(x, w)
        if is_query:  # per query: cancels between numerator and denominator of that query's row
            stab = wx.amax(dim=-1, keepdim=True)  # (B, H, L, 1)
        elif stab is None:  # one constant for every key of a (batch row, head): cancels in every query's ratio
            if keep is not None:
                wx = wx.masked_fill(~keep[:, None, :, None], float("-inf"))  # padded keys: exp(-inf) = 0
            stab = wx.amax(dim=(-2, -1), keepdim=True)  # (B, H, 1, 1)
        return torch.exp(wx - stab.detach()) / math.sqrt(self.options.num_features)

    @torch.no_grad()
    def key_stabiliser(self, k: torch.Tensor, keep: torch.Tensor | None, s: float, rows: int,
                       w: torch.Tensor) -> torch.Tensor:
        """The keys' shared stabiliser max log phi(k) over the real keys (B, K, 1, 1), chunk by chunk."""
        stab = None
        for a in range(0, k.shape[2], rows):
            wx = self.log_features(wide(k[:, :, a:a + rows]) * s, w)  # (B, K, c, F)
            if keep is not None:
                wx.masked_fill_(~keep[:, None, a:a + rows, None], float("-inf"))
            m = wx.amax(dim=(-2, -1), keepdim=True)
            stab = m if stab is None else torch.maximum(stab, m)
        return stab

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, S) or None
        o = self.options
        # count training passes only; not a recomputation inside backward (activation checkpointing replays forward)
        in_backward = torch._C._current_graph_task_id() != -1
        if self.training and o.redraw_every and torch.is_grad_enabled() and not in_backward:
            if int(self.calls) % o.redraw_every == 0 and int(self.calls) > 0:
                self.redraw_features()
            self.calls += 1
        s = (scale if scale is not None else q.shape[-1] ** -0.5) ** 0.5  # split the logit scale over q and k
        if not is_causal:  # chunked, recomputed in backward: no (T x F) feature maps kept
            f = o.num_features
            w = self.features.float().clone()  # the backward pass recomputes with these even if a redraw follows
            with torch.autocast(q.device.type, enabled=False):
                stab_k = self.key_stabiliser(k, keep, s, chunk_rows(q, f), w)  # (B, K, 1, 1)

            spec = FeatureSpec(lambda x: self.feature_map(wide(x) * s, True, w=w),
                               lambda x: self.feature_map(wide(x) * s, False, w=w, stab=stab_k), o.eps)
            return summary_attention(spec, q, k, v, keep, f)
        k, v = expand_kv(q, k, v)  # (B, H, S, D)
        with torch.autocast(q.device.type, enabled=False):  # exp features and prefix sums need fp32
            phi_q = self.feature_map(q.float() * s, True)  # (B, H, T, F)
            phi_k = self.feature_map(k.float() * s, False, keep)  # (B, H, S, F)
            out = linear_attention(phi_q, phi_k, v.float(), is_causal, o.chunk, o.eps)
        return out.to(q.dtype)  # (B, H, T, D)
