"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", ICML): softmax(q.k) replaced by the kernel
phi(q).phi(k) with phi(x) = elu(x) + 1, so attention is computed in O(T) time and memory by associativity.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j))       (paper eq. 5; j <= i when causal)

Bidirectional attention runs through ptmkit.nn.kernels.recompute (FeatureSpec below): the key summary
(sum_j phi(k_j) v_j^T, sum_j phi(k_j)) is accumulated chunk by chunk and the backward pass recomputes the features
per chunk, so no (T x F) feature map is kept. The causal prefix sums (paper eq. 9-10) are computed chunk by chunk:
inside a chunk of C tokens a masked quadratic term (C x C), across chunks a cumulative (F x D) state per chunk. That
costs O(T C + (T / C) F D) memory instead of the O(T F D) of a cumulative sum of per-token outer products.
`linear_attention` and FeatureSpec are shared with the Performer kernel (ptmkit.nn.kernels.performer), which only
swaps the feature map.
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length (= T), D head dim,
F feature dim, N chunks, C chunk length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, expand_kv, key_padding
from ptmkit.nn.kernels.recompute import summary_attention, wide


def linear_attention(
    phi_q: torch.Tensor,  # (B, H, T, F) non-negative query features
    phi_k: torch.Tensor,  # (B, H, S, F) non-negative key features (padded keys already zeroed)
    v: torch.Tensor,  # (B, H, S, D)
    causal: bool,
    chunk: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j) over all j (or j <= i when causal): (B, H, T, D)."""
    if not causal:
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, F, D)
        z = phi_k.sum(dim=2)  # (B, H, F)
        num = phi_q @ kv  # (B, H, T, D)
        den = (phi_q @ z.unsqueeze(-1)).squeeze(-1)  # (B, H, T)
        return num / den.clamp_min(eps).unsqueeze(-1)
    b, h, t, f = phi_q.shape
    c = min(chunk, t)
    pad = -t % c
    if pad:  # zero features past the end: padded keys add nothing, padded queries are cut off below
        phi_q, phi_k, v = (F.pad(x, (0, 0, 0, pad)) for x in (phi_q, phi_k, v))
    n = (t + pad) // c
    qc = phi_q.view(b, h, n, c, f)  # (B, H, N, C, F)
    kc = phi_k.view(b, h, n, c, f)  # (B, H, N, C, F)
    vc = v.reshape(b, h, n, c, v.shape[-1])  # (B, H, N, C, D)
    # within a chunk: the masked quadratic form
    tril = torch.ones(c, c, dtype=torch.bool, device=phi_q.device).tril()  # (C, C)
    a = (qc @ kc.transpose(-2, -1)).masked_fill(~tril, 0.0)  # (B, H, N, C, C)
    num = a @ vc  # (B, H, N, C, D)
    den = a.sum(dim=-1)  # (B, H, N, C)
    # across chunks: the state of every earlier chunk (exclusive prefix sum over N)
    kv = kc.transpose(-2, -1) @ vc  # (B, H, N, F, D) one state per chunk
    kv = F.pad(kv, (0, 0, 0, 0, 1, 0))[:, :, :-1].cumsum(dim=2)  # (B, H, N, F, D) sum over earlier chunks
    z = F.pad(kc.sum(dim=3), (0, 0, 1, 0))[:, :, :-1].cumsum(dim=2)  # (B, H, N, F)
    num = num + qc @ kv  # (B, H, N, C, D)
    den = den + (qc @ z.unsqueeze(-1)).squeeze(-1)  # (B, H, N, C)
    out = num / den.clamp_min(eps).unsqueeze(-1)  # (B, H, N, C, D)
    return out.reshape(b, h, n * c, -1)[:, :, :t]  # (B, H, T, D)


class FeatureSpec:
    """Bidirectional feature attention as a summary kernel (ptmkit.nn.kernels.recompute): the keys' summary is
    (sum_j phi(k_j) v_j^T (B, K, F, D), sum_j phi(k_j) (B, K, F)) per key/value head, shared by its g query heads.

    phi_q(x) and phi_k(x) map (..., D) to non-negative (..., F) float32 features (phi_k may use constants the kernel
    computed over all keys beforehand, like Performer's shared stabiliser)."""

    def __init__(self, phi_q, phi_k, eps: float):
        self.phi_q, self.phi_k, self.eps = phi_q, phi_k, eps

    def key_part(self, k, v, keep, params):
        phi = self.phi_k(k)  # (B, K, c, F)
        if keep is not None:
            phi = phi * keep[:, None, :, None]  # padded keys contribute nothing
        return phi.transpose(-2, -1) @ wide(v), phi.sum(dim=2)  # (B, K, F, D), (B, K, F)

    def query_part(self, q, lo, summary):
        kv, z = summary
        b, h, c, _ = q.shape
        kh = kv.shape[1]
        phi = self.phi_q(q).view(b, kh, h // kh, c, -1)  # (B, K, g, c, F): query head h reads kv head h // g
        num = phi @ kv.unsqueeze(2)  # (B, K, g, c, D)
        den = phi @ z[:, :, None, :, None]  # (B, K, g, c, 1)
        return (num / den.clamp_min(self.eps)).view(b, h, c, -1)


def check_chunk(name: str, chunk: int) -> None:
    if chunk < 1:
        raise ConfigError(f"attention kernel {name!r}: chunk must be >= 1 (tokens per causal prefix-sum chunk), "
                          f"got {chunk}; 64-128 is a good default")


def warn_no_dropout(name: str, dropout: float) -> None:
    if dropout > 0:
        warnings.warn(f"attention kernel {name!r} forms no attention matrix, so attention dropout {dropout} is not "
                      "applied (the other dropouts are); set the model's attention dropout to 0 to silence this",
                      stacklevel=3)


@dataclass
class LinearOptions:
    chunk: int = 64  # tokens per chunk of the causal prefix sums: within a chunk quadratic, across chunks a state
    eps: float = 1e-6  # floor of the normaliser phi(q).sum phi(k)

    def __post_init__(self) -> None:
        check_chunk("linear", self.chunk)
        if not self.eps > 0:
            raise ConfigError(f"attention kernel 'linear': eps must be > 0 (a floor of the normaliser), got {self.eps}")


class LinearAttention(AttentionKernel):
    """Katharopoulos et al. 2020: phi(x) = elu(x) + 1 features, O(T) bidirectional and causal (chunked prefix sums).

    The similarity is phi(q).phi(k), not exp(scale * q.k): `scale` is not used (as in the paper), so the kernel
    approximates softmax attention only loosely on fixed inputs; it is meant to be trained with. No attention matrix
    is formed, so attention dropout is not applied (a warning says so when the config asks for it).
    """

    Options = LinearOptions
    kind = "approximate"
    causal = True
    name = "linear"

    def __init__(self, cfg):
        super().__init__(cfg)
        warn_no_dropout(self.name, cfg.dropout)

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, S) or None
        if not is_causal:  # chunked, recomputed in backward: no (T x F) activations kept
            phi = lambda x: F.elu(wide(x)) + 1.0  # noqa: E731
            return summary_attention(FeatureSpec(phi, phi, self.options.eps), q, k, v, keep, q.shape[-1])
        k, v = expand_kv(q, k, v)  # (B, H, S, D)
        with torch.autocast(q.device.type, enabled=False):  # prefix sums of features need fp32
            phi_q = F.elu(q.float()) + 1.0  # (B, H, T, D): F = D for this feature map
            phi_k = F.elu(k.float()) + 1.0  # (B, H, S, D)
            if keep is not None:
                phi_k = phi_k * keep[:, None, :, None]  # padded keys contribute nothing
            out = linear_attention(phi_q, phi_k, v.float(), is_causal, self.options.chunk, self.options.eps)
        return out.to(q.dtype)  # (B, H, T, D)
