"""Vector quantisation with an exponential-moving-average codebook (van den Oord et al. 2017, "Neural Discrete
Representation Learning", §3.1-3.2 and Appendix A.1; Razavi et al. 2019, VQ-VAE-2): every input vector is replaced
by its nearest codebook vector, gradients pass the rounding unchanged (the straight-through estimator, §3.2), and the
encoder is pulled towards its codes by the commitment term ||z_e - sg(e)||^2 that the objective weights by beta.

The codebook is not learned by gradient. As in Appendix A.1 (and sonnet's VectorQuantizerEMA), each code keeps an
EMA of how many vectors it is assigned (N_k) and of their sum (m_k), and becomes m_k / N_k: the running mean of its
cluster, i.e. online k-means. N_k is Laplace-smoothed so a rarely used code never divides by ~0.

Dead codes: a code whose N_k falls below `dead_threshold` (vectors per batch, EMA) is restarted at a randomly chosen
input vector of the batch (Dhariwal et al. 2020, Jukebox §3.5 "random restarts"; lucidrains' vector-quantize-pytorch
`threshold_ema_dead_code`). Codes start with N_k = 1, so at the first update every code no input chose is restarted
at an input vector: the codebook is initialised from the data. The restart draws from a generator seeded by the
update count (a buffer), so a resumed run restarts the same codes at the same vectors.

Updates happen in forward() in training mode, like BatchNorm's running statistics; eval mode only reads the codebook.
Distances and updates run in float32 whatever the autocast.

Dimension legend: N vectors, K codes, D code width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    quantized: torch.Tensor  # (N, D) straight-through: forward = the codes' vectors, backward = identity to the input
    codes: torch.Tensor  # (N,) int64 code indices
    commitment: torch.Tensor  # () mean ||z - sg(e)||^2 per element (the objective weights it by beta)
    perplexity: torch.Tensor  # () exp(entropy) of this batch's code usage: K when all codes are used evenly
    restarts: int  # dead codes restarted by this call (0 in eval mode)


class EMAVectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, epsilon: float = 1e-5,
                 dead_threshold: float = 1.0):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.epsilon, self.dead_threshold = decay, epsilon, dead_threshold
        embedding = torch.randn(codebook_size, dim)
        # buffers: saved in checkpoints and model directories, never seen by the optimizer
        self.register_buffer("embedding", embedding)  # (K, D) the codebook
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,) N_k
        self.register_buffer("embedding_sum", embedding.clone())  # (K, D) m_k
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # seeds the restarts (resume-exact)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) index of the nearest code (squared Euclidean distance)."""
        e = self.embedding
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(1)[None]  # (N, K)
        return d.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) code indices -> (..., D) their vectors."""
        return F.embedding(codes, self.embedding)

    def forward(self, z: torch.Tensor) -> Quantized:
        with torch.autocast(z.device.type, enabled=False):
            zf = z.float()  # (N, D)
            codes = self.nearest(zf.detach())
            onehot = F.one_hot(codes, self.codebook_size).to(zf.dtype)  # (N, K)
            restarts = 0
            if self.training:
                restarts = self._update(zf.detach(), onehot)
            e = self.lookup(codes)  # (N, D) after the update: each code already moved towards its assigned mean
            commitment = F.mse_loss(zf, e.detach())
            quantized = zf + (e - zf).detach()  # straight-through estimator (§3.2)
            usage = onehot.mean(0)  # (K,)
            perplexity = torch.exp(-(usage * usage.clamp_min(1e-10).log()).sum())
        return Quantized(quantized.to(z.dtype), codes, commitment, perplexity, restarts)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, onehot: torch.Tensor) -> int:
        """One EMA step of N_k and m_k towards this batch's assignment, the codes re-centred, dead codes restarted."""
        g = self.decay
        self.cluster_size.mul_(g).add_(onehot.sum(0), alpha=1 - g)  # (K,)
        self.embedding_sum.mul_(g).add_(onehot.t() @ z, alpha=1 - g)  # (K, D)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n  # Laplace
        self.embedding.copy_(self.embedding_sum / smoothed[:, None])
        self.updates += 1
        if self.dead_threshold <= 0:
            return 0
        dead = (self.cluster_size < self.dead_threshold).nonzero().squeeze(1)  # (R,)
        if len(dead) == 0:
            return 0
        g_cpu = torch.Generator().manual_seed(int(self.updates))
        pick = torch.randint(len(z), (len(dead),), generator=g_cpu).to(z.device)  # with replacement: R may exceed N
        self.embedding[dead] = z[pick]
        self.embedding_sum[dead] = z[pick] * self.dead_threshold
        self.cluster_size[dead] = self.dead_threshold
        return len(dead)
