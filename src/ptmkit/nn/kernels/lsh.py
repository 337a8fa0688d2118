"""LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer", ICLR): queries and keys are hashed by
random rotations into buckets, and each query attends only to keys of its own bucket, in chunks, O(T C) per round.

    h(x) = argmax([x R ; -x R]),   R (D, n_buckets / 2) random   (angular LSH, paper §3)

Per hash round: queries and keys are ordered by (bucket, position); every bucket's run is cut into chunks of C, and
each query chunk attends the key chunk of the same rank in its bucket and the one before it (paper: "within a chunk
and one chunk back"). Rounds are combined by their log-sum-exp (paper eq. 4 with the normaliser of each round).
A token does not attend to itself unless nothing else is available (paper §3, "shared-QK": self-attention is masked
with a large negative score, -1e5, not -inf). Causal attention masks keys after the query inside the chunks.

Two departures from Reformer, both needed because ptmkit layers project keys separately from queries (Reformer ties
k = q / |q|): queries and keys are hashed with the same rotations but ordered separately, and chunks never straddle
two buckets (each bucket's run is padded to a multiple of C). So chunk membership depends only on a token's rank
inside its bucket, which depends only on earlier tokens: causal outputs never depend on the future (with Reformer's
chunks across bucket boundaries a future token's bucket shifts where every later chunk starts). Rotations are drawn
once and kept in a buffer (Reformer redraws them every pass), so outputs are reproducible.
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length (= T), D head dim,
R hash rounds, U buckets, L laid-out length (bucket runs padded to multiples of C), N = L / C chunks, C chunk length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, expand_kv, key_padding

SELF_SCORE = -1e5  # Reformer's score for a token attending to itself: used only when nothing else is visible


@dataclass
class LSHOptions:
    n_buckets: int = 32  # U buckets per round; Reformer uses about 2 T / chunk_len
    n_hashes: int = 2  # R hash rounds (more rounds: fewer missed neighbours, R times the cost)
    chunk_len: int = 64  # C: queries per chunk; each chunk sees 2 C keys of its bucket
    seed: int | None = None  # None = rotations from the global torch RNG at build; int = a fixed draw

    def __post_init__(self) -> None:
        where = "attention kernel 'lsh'"
        if self.n_buckets < 1 or (self.n_buckets > 1 and self.n_buckets % 2):
            raise ConfigError(
                f"{where}: n_buckets must be 1 (no hashing) or even (angular LSH draws n_buckets / 2 rotations and "
                f"takes the argmax over [xR, -xR]), got {self.n_buckets}; Reformer uses about 2 x seq_len / chunk_len"
            )
        if self.n_hashes < 1:
            raise ConfigError(f"{where}: n_hashes must be >= 1 (hash rounds), got {self.n_hashes}")
        if self.chunk_len < 1:
            raise ConfigError(f"{where}: chunk_len must be >= 1, got {self.chunk_len}; 32-128 is usual")


def bucket_layout(bq: torch.Tensor, bk: torch.Tensor, n_buckets: int, c: int):
    """Slots of queries and keys in a layout where every bucket owns a run of whole chunks.

    bq, bk: (..., T) bucket ids. Returns (slot_q, slot_k) (..., T) slot of every query/key, (q_at, k_at) (..., L)
    position held by every slot (-1 = empty), chunk_start (..., N) True where a chunk begins its bucket's run.
    A query/key's slot is its bucket's run offset + its rank among the bucket's queries/keys in position order.
    """
    t = bq.shape[-1]
    pos = torch.arange(t, device=bq.device)

    def ranks(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = (b * t + pos).argsort(dim=-1)  # (..., T) by (bucket, position)
        counts = F.one_hot(b, n_buckets).sum(dim=-2)  # (..., U)
        starts = counts.cumsum(-1) - counts  # (..., U) first sorted index of every bucket
        rank_sorted = torch.arange(t, device=b.device) - starts.gather(-1, b.gather(-1, order))  # (..., T)
        return torch.empty_like(order).scatter_(-1, order, rank_sorted), counts  # rank of every token (..., T)

    rq, cq = ranks(bq)
    rk, ck = ranks(bk)
    run = (torch.maximum(cq, ck) + c - 1) // c * c  # (..., U) each bucket's run: whole chunks
    offset = run.cumsum(-1) - run  # (..., U)
    length = int(run.sum(-1).max())  # L: the longest layout over batch, heads and rounds
    slot_q = offset.gather(-1, bq) + rq  # (..., T)
    slot_k = offset.gather(-1, bk) + rk
    empty = torch.full((*bq.shape[:-1], length), -1, dtype=torch.long, device=bq.device)  # (..., L)
    q_at = empty.scatter(-1, slot_q, pos.expand_as(slot_q))  # (..., L) query position in every slot
    k_at = empty.scatter(-1, slot_k, pos.expand_as(slot_k))
    n = length // c
    starts = torch.zeros((*bq.shape[:-1], n + 1), dtype=torch.bool, device=bq.device)
    chunk_start = starts.scatter(-1, offset // c, True)[..., :n]  # (..., N) (an empty run's offset is the next's)
    return slot_q, slot_k, q_at, k_at, chunk_start


class LSHAttention(AttentionKernel):
    """Reformer LSH attention: n_hashes rounds of angular LSH, bucket-chunked attention, rounds merged by LSE."""

    Options = LSHOptions
    kind = "approximate"
    causal = True
    name = "lsh"

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.options
        g = None if o.seed is None else torch.Generator().manual_seed(o.seed)
        rot = torch.randn(o.n_hashes, self.head_dim, max(o.n_buckets // 2, 1), generator=g)  # (R, D, U/2)
        self.register_buffer("rotations", rot)

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket ids (B, H, R, T) of vectors x (B, H, T, D): angular LSH, one random rotation per round."""
        b, h, t, _ = x.shape
        if self.options.n_buckets == 1:
            return torch.zeros(b, h, self.options.n_hashes, t, dtype=torch.long, device=x.device)
        xr = torch.einsum("bhtd,rdu->bhrtu", x.float(), self.rotations.float())  # (B, H, R, T, U/2)
        return torch.cat([xr, -xr], dim=-1).argmax(dim=-1)  # (B, H, R, T)

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, S) or None
        k, v = expand_kv(q, k, v)  # (B, H, S, D)
        b, h, t, d = q.shape
        o = self.options
        c = min(o.chunk_len, t)
        scale = scale if scale is not None else d ** -0.5
        with torch.no_grad():
            slot_q, _, q_at, k_at, chunk_start = bucket_layout(self.hash(q), self.hash(k), o.n_buckets, c)
        n = q_at.shape[-1] // c  # N chunks
        lay = (b, h, o.n_hashes, n, c)

        def gather(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) at (B, H, R, L) -> laid out
            x = x.unsqueeze(2).expand(b, h, o.n_hashes, t, d)  # a view: no copy per round
            return x.gather(3, at.clamp_min(0).unsqueeze(-1).expand(*at.shape, d)).view(*lay, d)

        qc = gather(q, q_at)  # (B, H, R, N, C, D)
        kc, vc = gather(k, k_at), gather(v, k_at)  # (B, H, R, N, C, D)
        # the window of every query chunk: the previous chunk of its bucket's run, then its own
        prev = lambda x: torch.cat([torch.zeros_like(x[:, :, :, :1]), x[:, :, :, :-1]], dim=3)  # noqa: E731
        kw = torch.cat([prev(kc), kc], dim=4)  # (B, H, R, N, 2C, D)
        vw = torch.cat([prev(vc), vc], dim=4)
        qpos, kpos = q_at.view(lay), k_at.view(lay)  # (B, H, R, N, C) positions, -1 = empty slot
        kpos_w = torch.cat([prev(kpos).masked_fill(chunk_start[..., None], -1), kpos], dim=4)  # (B, H, R, N, 2C)
        allowed = (kpos_w >= 0)[..., None, :] & (qpos >= 0)[..., :, None]  # (B, H, R, N, C, 2C)
        allowed &= kpos_w[..., None, :] != qpos[..., :, None]  # no attending to oneself (Reformer §3)
        if is_causal:
            allowed &= kpos_w[..., None, :] <= qpos[..., :, None]
        if keep is not None:
            kept = keep[:, None, None, None, :].expand(*kpos_w.shape[:-1], t)  # (B, H, R, N, S) a view
            allowed &= kept.gather(-1, kpos_w.clamp_min(0)).unsqueeze(-2)  # (B, H, R, N, 1, 2C) padding never seen
        # in-place where autograd allows: these (B, H, R, N, C, 2C) element-wise passes dominate the kernel's time
        scores = ((qc * scale) @ kw.transpose(-2, -1)).float()  # (B, H, R, N, C, 2C)
        scores.masked_fill_(~allowed, float("-inf"))  # its backward zeroes these entries (incl. all-masked rows' NaN)
        # log-sum-exp over the window and the self slot (score SELF_SCORE): finite even when nothing is allowed
        lse = torch.logaddexp(scores.logsumexp(dim=-1), torch.tensor(SELF_SCORE))  # (B, H, R, N, C)
        probs = (scores - lse[..., None]).exp_()  # (B, H, R, N, C, 2C)
        p_self = torch.exp(SELF_SCORE - lse)  # (B, H, R, N, C) weight of the query's own value
        probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
        v_self = gather(v, q_at)  # (B, H, R, N, C, D) the value at each query's own position
        out = probs.to(vw.dtype) @ vw + p_self[..., None].to(v.dtype) * v_self  # (B, H, R, N, C, D)
        # back to positions, then merge the rounds by their normalisers (Reformer eq. 4 over rounds)
        out = out.reshape(b, h, o.n_hashes, -1, d)  # (B, H, R, L, D)
        out = out.gather(3, slot_q.unsqueeze(-1).expand(*slot_q.shape, d))  # (B, H, R, T, D)
        lse = lse.reshape(b, h, o.n_hashes, -1).gather(3, slot_q)  # (B, H, R, T)
        w = torch.softmax(lse, dim=2)  # (B, H, R, T) share of every round
        return (w[..., None] * out.float()).sum(dim=2).to(q.dtype)  # (B, H, T, D)
