"""Transformer-XL relative positional attention and segment memory (Dai et al. 2019 §3.2-3.3), shared by XLNet
(models/xlnet.py, bidirectional) and Transformer-XL (models/transfo_xl.py, causal).

Dai, Yang, Yang, Carbonell, Le, Salakhutdinov. "Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context." ACL 2019. The attention logit of query i and key j (eq. in §3.3) is

    (q_i + u)·k_j  +  (q_i + v)·W_{k,R} R_{i-j}          (terms (a)+(c) and (b)+(d))

with sinusoidal R (no absolute positions anywhere) and two learned biases u (content) and v (position). The
position term is computed once against every relative distance and then realigned per query ("rel-shift").
The memory of a layer is its input states of the previous segment(s), kept without gradient (§3.2).

Dimension legend: B batch, N heads, D head size, H hidden size, T query (segment) length, M memory length,
S = M + T key length, R relative distances.
"""

from __future__ import annotations

import torch


def _sinusoid(pos_seq: torch.Tensor, hidden: int) -> torch.Tensor:
    """(R,) distances -> (R, H) embeddings [sin(d·f), cos(d·f)], f = 1 / 10000^(2k/H) (Vaswani et al. 2017 §3.5)."""
    freq_seq = torch.arange(0, hidden, 2.0, dtype=torch.int64, device=pos_seq.device).float()
    inv_freq = 1 / torch.pow(10000, (freq_seq / hidden))  # (H/2,)
    sinusoid = pos_seq[:, None] * inv_freq  # (R, H/2)
    return torch.cat([torch.sin(sinusoid), torch.cos(sinusoid)], dim=-1)  # (R, H)


def relative_positions(q_len: int, k_len: int, hidden: int, clamp_len: int, device) -> torch.Tensor:
    """Bidirectional table (R = k_len + q_len, H) of the distances k_len, k_len-1, ..., -q_len+1 (XLNet).

    Row r holds distance k_len - r: the row of distance 0 is k_len (pass zero_row=k_len to rel_shift, the default).
    Written as transformers writes it (int arange, then float) so the values agree bit for bit.
    """
    pos_seq = torch.arange(k_len, -q_len, -1.0, dtype=torch.int64, device=device).float()  # (R,)
    if clamp_len > 0:
        pos_seq = pos_seq.clamp(-clamp_len, clamp_len)
    return _sinusoid(pos_seq, hidden)


def past_relative_positions(k_len: int, hidden: int, clamp_len: int, device) -> torch.Tensor:
    """Causal table (R = k_len, H) of the distances k_len-1, ..., 1, 0 (Transformer-XL: a query never looks ahead).

    Row r holds distance k_len - 1 - r: the row of distance 0 is k_len - 1 (pass zero_row=k_len-1 to rel_shift).
    Distances beyond clamp_len (> 0) share clamp_len's embedding (Transformer-XL's clamp_len).
    """
    pos_seq = torch.arange(k_len - 1, -1, -1.0, dtype=torch.int64, device=device).float()  # (R,)
    if clamp_len > 0:
        pos_seq = pos_seq.clamp(max=clamp_len)
    return _sinusoid(pos_seq, hidden)


def rel_shift(scores: torch.Tensor, k_len: int, zero_row: int | None = None) -> torch.Tensor:
    """(B, N, T, R) scores against every relative distance -> (B, N, T, S) scores against each key.

    Query i sits at absolute position M + i (M = k_len - T memory states come first), so key j is M + i - j away,
    which is row zero_row - (M + i - j) of a table whose row `zero_row` holds distance 0. A gather states this
    directly; it equals Transformer-XL's pad-and-reshape trick (`_rel_shift`). Indices that fall outside the table
    (keys ahead of a causal query, which are masked anyway) are clamped into it.
    """
    b, n, t, r = scores.shape
    zero_row = k_len if zero_row is None else zero_row
    m = k_len - t
    i = torch.arange(t, device=scores.device)[:, None]
    j = torch.arange(k_len, device=scores.device)[None, :]
    index = (zero_row - m - i + j).clamp_(0, r - 1).expand(b, n, t, k_len)  # (B, N, T, S)
    return scores.gather(-1, index)


def relative_scores(q: torch.Tensor, k: torch.Tensor, k_pos: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                    zero_row: int | None = None) -> torch.Tensor:
    """Unscaled content + position logits (B, N, T, S) of Transformer-XL §3.3.

    q (B, T, N, D); k (B, S, N, D); k_pos (R, N, D) = W_{k,R} R (projected relative positions); u, v (N, D).
    """
    content = torch.einsum("bind,bjnd->bnij", q + u, k)  # (B, N, T, S): terms (a) + (c)
    position = torch.einsum("bind,rnd->bnir", q + v, k_pos)  # (B, N, T, R): terms (b) + (d)
    return content + rel_shift(position, k.shape[1], zero_row)  # (B, N, T, S)


def update_memory(prev: torch.Tensor | None, cur: torch.Tensor, mem_len: int) -> torch.Tensor:
    """The memory for the next segment (§3.2): the last mem_len (> 0) states of [previous memory; this segment's
    layer input], detached, so no gradient ever flows into an earlier segment (SG(·) in the paper)."""
    new = cur if prev is None else torch.cat([prev, cur], dim=1)  # (B, M + T, H)
    return new[:, -mem_len:].detach()
