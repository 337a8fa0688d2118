"""The distillation losses of the survey's §6.3 methods as pure functions of student and teacher tensors.

Dimension legend: B batch, T tokens, S keys, H heads, R relation heads, D size, C classes (or V vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: cross-entropy of the student's softened distribution against the teacher's, times T^2 so
    its gradients keep their size as T changes. Logits (..., C); mean over the leading dimensions. Zero-gradient
    (and equal to the teacher's entropy) when the student equals the teacher."""
    t = temperature
    target = F.softmax(teacher.float() / t, dim=-1)
    return -(target * F.log_softmax(student.float() / t, dim=-1)).sum(-1).mean() * t * t


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, times T^2: soft_cross_entropy minus the teacher's
    entropy, so exactly 0 when the student equals the teacher (reported as the distillation loss)."""
    t = temperature
    log_p = F.log_softmax(teacher.float() / t, dim=-1)
    log_q = F.log_softmax(student.float() / t, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t


def prediction_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The prediction-layer term: soft KL for classes (C > 1), mean squared error for a regression output (C = 1)."""
    if student.shape[-1] == 1:
        return F.mse_loss(student.float(), teacher.float())
    return soft_kl(student, teacher, temperature)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (B, T, ...) over the real tokens (mask (B, T), 1 = token) and every trailing dimension."""
    if mask is None:
        return x.float().mean()
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - mask.dim())))
    return (x.float() * m).sum() / (m.sum() * x[0, 0].numel()).clamp_min(1)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """DistilBERT (Sanh et al. 2019): 1 - cos(h_s, h_t) per token, averaged over real tokens. (B, T, H) each."""
    return masked_mean(1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), mask)


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """TinyBERT's hidden-state and embedding terms: mean squared error over real tokens. (B, T, H) each."""
    return masked_mean((student.float() - teacher.float()) ** 2, mask)


def patient_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """BERT-PKD (Sun et al. 2019, eq. 3): squared distance of the l2-normalised [CLS] states, summed over the
    matched layers and averaged over the batch. (L, B, H) each."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return ((s - t) ** 2).sum(-1).sum(0).mean()


def attention_score_loss(student: torch.Tensor, teacher: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """TinyBERT (Jiao et al. 2020, eq. 3): mean squared error of the attention logits (B, H, T, S) over the entries a
    query may attend to (TinyBERT zeroes the masked ones in both); allowed is bool, broadcastable."""
    ok = allowed.expand_as(student).to(student.dtype)
    return (((student.float() - teacher.float()) ** 2) * ok).sum() / ok.sum().clamp_min(1)


def relation_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLMv2 (Wang et al. 2021): concatenate the attention heads' vectors and split them into `heads` relation
    heads, so teacher and student compare relations with any head counts. (B, H, T, D) -> (B, R, T, H*D/R)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, heads, h * d // heads).transpose(1, 2)


def relation_kl(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                allowed: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
    """MiniLM (Wang et al. 2020, eqs. 4-6): KL(teacher || student) of the scaled dot-product relations
    softmax(a b^T / sqrt(d_r)) over the keys each query may attend to. Each side is (a, b) of (B, R, T|S, d_r) with the
    same R; d_r may differ between them. Averaged over relation heads and real queries. With a = q, b = k and R the
    head count this is the attention distribution; with a = b = v it is the value relation."""

    def log_relation(a, b):
        # in fp32 even under bf16 autocast (which would run this matmul in bf16): softmax over near-equal
        # relations needs the precision, and the masked fill needs fp32's range
        with torch.autocast(a.device.type, enabled=False):
            logits = a.float() @ b.float().transpose(-1, -2) / a.shape[-1] ** 0.5  # (B, R, T, S)
        return logits.masked_fill(~allowed, torch.finfo(torch.float32).min).log_softmax(-1)

    log_q, log_p = log_relation(*student), log_relation(*teacher)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~allowed, 0.0).sum(-1)  # (B, R, T)
    return masked_mean(kl.transpose(1, 2), query_mask)  # real queries, every relation head
