"""Permutation language modelling with partial prediction (Yang et al. 2019, XLNet §2.2–2.3; survey §3/§4).

Yang, Dai, Yang, Carbonell, Salakhutdinov, Le. "XLNet: Generalized Autoregressive Pretraining for Language
Understanding." NeurIPS 2019.

For each sequence a factorisation order z is sampled; the model maximises log p(x_{z>c} | x_{z<=c}), predicting only
the last 1/K of the order (partial prediction, §2.3: K = 6–7) with the query stream of two-stream attention. The
input is never corrupted: the order lives entirely in the attention masks that `corrupt()` builds.

As in the released implementation (`_local_perm`), the context z<=c is one block: context tokens attend to each other
(and never to a target); target t attends to the context and to the targets before it in z, and its content stream
also to itself. Special tokens and padding are never predicted; special tokens are context, padding is never seen.

Dimension legend: B batch, T length, P predictions per row (padded to the batch maximum), V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch, document_mask


@dataclass
class PLMConfig:
    partial_prediction: float = 6.0  # K: predict the last 1/K of each order (§2.3; XLNet uses K = 6 or 7)
    num_predict: int | None = None  # a fixed number of predictions per sequence (released code: 85 of 512); None = n/K
    special_token_ids: list[int] = field(default_factory=list)  # never predicted, always visible ([CLS], [SEP], ...)

    def __post_init__(self) -> None:
        if not self.partial_prediction >= 1.0:
            raise ConfigError(
                f"plm: partial_prediction K must be >= 1 (1/K of each order is predicted; the paper uses 6–7), "
                f"got {self.partial_prediction}"
            )
        if self.num_predict is not None and self.num_predict < 1:
            raise ConfigError(f"plm: num_predict must be >= 1 or null (= n/K), got {self.num_predict}")


def sample_order(candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool predictable -> (B, T) positions in factorisation order: a uniform random permutation of the
    predictable positions, after all the others (which are context)."""
    keys = torch.rand(candidates.shape, generator=generator)  # (B, T) in [0, 1)
    keys = torch.where(candidates, keys, torch.full_like(keys, -1.0))  # non-predictable first
    return keys.argsort(dim=-1)  # (B, T)


class PermutationLM:
    task = "permutation-lm"

    def __init__(self, cfg: PLMConfig | None = None):
        self.cfg = cfg or PLMConfig()
        self._special = torch.tensor(sorted(set(self.cfg.special_token_ids)), dtype=torch.long)

    def check_seq_len(self, seq_len: int) -> None:
        if self.cfg.num_predict is not None and self.cfg.num_predict > seq_len:
            raise ConfigError(f"plm: num_predict {self.cfg.num_predict} exceeds data.seq_len {seq_len}; lower it "
                              f"(XLNet predicts about seq_len / K = {seq_len / self.cfg.partial_prediction:.0f})")

    # ---- data side ----------------------------------------------------------------------------------------------
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Add perm_order (B, T), perm_mask (B, T, T) bool (True = row i may not attend to j), target_mapping
        (B, P, T) float one-hot rows, target_positions (B, P) and labels (B, P) (-100 = no prediction)."""
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        b, t = ids.shape
        candidates = ~torch.isin(ids, self._special)
        if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
            candidates &= batch["attention_mask"].bool()
        n_cand = candidates.sum(-1)  # (B,)
        if c.num_predict is not None:
            n_pred = n_cand.clamp_max(c.num_predict)
        else:  # round(n / K), at least one where anything is predictable
            n_pred = torch.minimum((n_cand.float() / c.partial_prediction).round().long().clamp_min(1), n_cand)

        order = sample_order(candidates, generator)  # (B, T)
        rank = order.argsort(dim=-1)  # (B, T): where each position falls in the order
        is_target = rank >= (t - n_pred)[:, None]  # (B, T): the last n_pred of the order
        # Context shares the lowest rank (one block); a target is hidden from every query at or before it in z.
        eff = torch.where(is_target, rank, torch.full_like(rank, -1))  # (B, T)
        perm_mask = is_target[:, None, :] & (eff[:, None, :] >= eff[:, :, None])  # (B, T_query, T_key)

        p = c.num_predict if c.num_predict is not None else max(int(n_pred.max()), 1)
        pos = torch.arange(t)
        key = torch.where(is_target, pos, pos + t)  # targets first, in position order
        target_positions = key.argsort(dim=-1)[:, :p] if p <= t else F.pad(key.argsort(dim=-1), (0, p - t))
        valid = torch.arange(p)[None, :] < n_pred[:, None]  # (B, P)
        target_mapping = F.one_hot(target_positions, t).float() * valid[..., None]  # (B, P, T)
        labels = torch.where(valid, ids.gather(1, target_positions), torch.full_like(target_positions, -100))
        return {**batch, "perm_order": order, "perm_mask": perm_mask, "target_mapping": target_mapping,
                "target_positions": target_positions, "labels": labels}

    # ---- model side ---------------------------------------------------------------------------------------------
    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.get("attention_mask")
        if "document_ids" in batch:
            mask = document_mask(batch["document_ids"])  # packed documents do not see each other
        logits = model(batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
                       perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"]).logits  # (B, P, V)
        labels = batch["labels"]  # (B, P)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        with torch.no_grad():
            valid = labels != -100
            acc = (logits.argmax(-1)[valid] == labels[valid]).float().mean()
        return loss, {"loss": loss.item(), "plm_accuracy": acc.item(), "predicted_tokens": float(valid.sum())}
