"""Vision-language pre-training of single- and two-stream encoders (survey §5.2): the objectives of VisualBERT
(Li et al. 2019), LXMERT (Tan & Bansal 2019) and UNITER (Chen et al. 2020), on caption tokens and image patches.

- MLM on image-conditioned text: BERT's masking (15%, 80/10/10) of the caption, predicted with the whole image visible.
- MRM, masked region modelling: 15% of the patches replaced by a learned [MASK] vector (models/vl_base.py), with the
  caption visible; two heads read the masked patch's state: feature regression to its raw pixels (UNITER MRFR, an L2
  loss) and classification into its k-means codeword (UNITER MRC with a hard label; objectives/codebook.py).
- ITM, image-text matching: the image of a row is swapped for another row's with probability `itm_negative_prob`,
  and the pooled [CLS] state predicts match / mismatch (UNITER §3.2 ITM; LXMERT's cross-modality matching).
- WRA (optional, `wra_weight` > 0): on the ITM rows, the optimal-transport distance between token and patch states
  (objectives/ipot.py) pulled down on matched pairs and pushed up on mismatched ones (UNITER §3.2 WRA).

UNITER's conditional masking (§3.1: "mask only one modality while keeping the other intact") and its rule that
masked modelling uses matched pairs only are kept by giving each row one task: a row is an MLM row, an MRM row or an
ITM row (fractions `mlm_rows`, `mrm_rows`, `itm_rows`), so one forward pass serves all three. UNITER draws a task per
batch; per row is the same in expectation, and ITM rows stay unmasked, so "masked" cannot give "matched" away. As in
UNITER's data code, an MLM (MRM) row with no token (patch) drawn gets one, so short captions still teach.

Dimension legend: B batch, T caption tokens, N patches, F pixels per patch, K codewords.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.nn.patches import patchify
from ptmkit.objectives.base import Batch
from ptmkit.objectives.ipot import wra_distance
from ptmkit.objectives.masking import MaskingConfig, maskable_positions, mean_cross_entropy, replace_tokens

MLM_ROW, MRM_ROW, ITM_ROW = 0, 1, 2


@dataclass
class VLPConfig(MaskingConfig):
    name = "vlp"

    region_mask_prob: float = 0.15  # UNITER §3.2: 15% of the regions of an MRM row
    itm_negative_prob: float = 0.5  # of the ITM rows, the fraction whose image is swapped for another row's
    mlm_rows: float = 1 / 3  # fraction of rows trained by MLM
    mrm_rows: float = 1 / 3  # ... by masked region modelling (MRFR + MRC)
    itm_rows: float = 1 / 3  # ... by image-text matching (and WRA)
    mrfr_weight: float = 1.0  # masked region feature regression's weight in the MRM rows' loss
    mrc_weight: float = 1.0  # masked region classification's weight (cross-entropy to each region's class)
    wra_weight: float = 0.0  # > 0 adds UNITER's word-region alignment (UNITER's code weighs it 0.1)
    ipot_beta: float = 0.5  # IPOT's proximal step (UNITER: 0.5)
    ipot_iterations: int = 50  # (UNITER: 50)
    codebook: str = ""  # codebook.safetensors of MRC's classes; "" = ptm pretrain fits one from the training images
    codebook_samples: int = 20000  # patches drawn from the training images to fit it

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("region_mask_prob", "itm_negative_prob"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"vlp: {name} must be in (0, 1), got {getattr(self, name)}")
        rows = (self.mlm_rows, self.mrm_rows, self.itm_rows)
        if min(rows) < 0 or abs(sum(rows) - 1.0) > 1e-6:
            raise ConfigError(f"vlp: mlm_rows, mrm_rows and itm_rows are fractions of each batch's rows: each >= 0, "
                              f"summing to 1 (got {rows})")
        if min(self.mrfr_weight, self.mrc_weight, self.wra_weight) < 0:
            raise ConfigError("vlp: mrfr_weight, mrc_weight and wra_weight must be >= 0")
        if self.ipot_beta <= 0 or self.ipot_iterations < 1 or self.codebook_samples < 1:
            raise ConfigError("vlp: ipot_beta must be > 0, ipot_iterations and codebook_samples >= 1")


def _at_least_one(chosen: torch.Tensor, eligible: torch.Tensor, rows: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """chosen (B, L) with one eligible position drawn uniformly added to every row of `rows` that has none."""
    empty = rows & ~chosen.any(1) & eligible.any(1)  # (B,)
    score = torch.rand(chosen.shape, generator=generator) * eligible  # (B, L): ineligible positions score 0
    one = F.one_hot(score.argmax(1), chosen.shape[1]).bool()  # (B, L)
    return chosen | (one & empty[:, None])


def draw_negatives(b: int, negative: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,) the row whose image each row reads: itself, or for a negative row another row drawn uniformly (an offset
    of 1..B-1, so never its own image)."""
    shift = torch.randint(1, max(b, 2), (b,), generator=generator)
    rows = torch.arange(b)
    return torch.where(negative, (rows + shift) % b, rows)


class VisionLanguagePretraining:
    task = "vl-pretraining"
    inputs = ("pixel_values",)  # image-text batches (data/images), as CLIP's

    def __init__(self, cfg: VLPConfig | None = None):
        self.cfg = cfg or VLPConfig()
        self.cfg.check_ready()
        self.special = torch.tensor(self.cfg.special_token_ids, dtype=torch.long)
        self.patch_size: int | None = None

    def bind(self, model) -> None:
        """Read the patch size of the model the batches are for (corrupt() draws one mask bit per patch). No
        networks: the heads belong to the model (models/vl_heads.py)."""
        c = backbone_of(model).config
        if not hasattr(c, "num_visual_classes"):
            raise ConfigError(f"objective vlp trains a vision-language encoder (model family visualbert or lxmert), "
                              f"not {backbone_of(model).family}")
        self.patch_size = c.patch_size
        return None

    # ---- corruption (data loader, CPU) ------------------------------------------------------------------------------

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.patch_size is None:
            raise RuntimeError("vlp: call objective.bind(model) before corrupt(): the masks are drawn per patch of "
                               "the model's patch_size (ptm pretrain and the training loop do)")
        c = self.cfg
        ids, pixels = batch["input_ids"], batch["pixel_values"]
        b = ids.shape[0]
        n = (pixels.shape[-1] // self.patch_size) * (pixels.shape[-2] // self.patch_size)
        u = torch.rand(b, generator=generator)  # (B,) one task per row
        task = (u >= c.mlm_rows).long() + (u >= c.mlm_rows + c.mrm_rows).long()  # 0 MLM, 1 MRM, 2 ITM
        # MLM rows: BERT's masking of the caption
        maskable = maskable_positions(batch, self.special)  # (B, T)
        chosen = maskable & (torch.rand(ids.shape, generator=generator) < c.mask_prob) & (task == MLM_ROW)[:, None]
        chosen = _at_least_one(chosen, maskable, task == MLM_ROW, generator)
        r = torch.rand(ids.shape, generator=generator)
        out = dict(batch)
        out["input_ids"] = replace_tokens(ids, chosen, r, c, generator)
        out["labels"] = torch.where(chosen, ids, torch.full_like(ids, -100))
        # MRM rows: patches to hide
        every = torch.ones(b, n, dtype=torch.bool)
        image_mask = (torch.rand(b, n, generator=generator) < c.region_mask_prob) & (task == MRM_ROW)[:, None]
        out["image_mask"] = _at_least_one(image_mask, every, task == MRM_ROW, generator)  # (B, N)
        # ITM rows: swap images for negatives
        negative = (task == ITM_ROW) & (torch.rand(b, generator=generator) < c.itm_negative_prob)
        source = draw_negatives(b, negative, generator)
        out["pixel_values"] = pixels[source]
        out["itm_labels"] = torch.where(task == ITM_ROW, (~negative).long(), torch.full_like(task, -100))  # (B,)
        return out

    # ---- loss (model device) ---------------------------------------------------------------------------------------

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        labels, image_mask, itm_labels = batch["labels"], batch["image_mask"], batch["itm_labels"]
        where = labels != -100  # (B, T)
        out = model(batch["input_ids"], batch["pixel_values"], batch.get("attention_mask"), image_mask=image_mask,
                    score_positions=where)
        mlm, mlm_acc = mean_cross_entropy(out.mlm_logits, labels[where])
        # masked region targets: the masked patches' raw pixels (the image the row read: MRM rows are never swapped)
        target = patchify(batch["pixel_values"], model.config.patch_size)[image_mask].float()  # (R, F)
        regions = max(int(target.shape[0]), 1)
        mrfr = F.mse_loss(out.region_features.float(), target, reduction="sum") / (regions * target.shape[-1])
        if not model.codebook_fitted:
            raise ConfigError("vlp: the model's region codebook is not fitted (all zeros), so masked region "
                              "classification has no classes; ptm pretrain fits it from the training images, or call "
                              "model.set_codebook(fit_codebook(patches, k)) (objectives/codebook.py)")
        classes = torch.cdist(target, model.codebook.float()).argmin(-1)  # (R,) nearest codeword
        mrc, mrc_acc = mean_cross_entropy(out.region_logits, classes)
        scored = itm_labels != -100  # (B,)
        n_itm = max(int(scored.sum()), 1)
        itm = F.cross_entropy(out.itm_logits.float()[scored], itm_labels[scored], reduction="sum") / n_itm
        with torch.no_grad():
            itm_acc = (out.itm_logits[scored].argmax(-1) == itm_labels[scored]).float().sum() / n_itm
        loss = mlm + c.mrfr_weight * mrfr + c.mrc_weight * mrc + itm
        metrics = {"mlm_loss": mlm.item(), "mlm_accuracy": mlm_acc.item(), "mrfr_loss": mrfr.item(),
                   "mrc_loss": mrc.item(), "mrc_accuracy": mrc_acc.item(), "itm_loss": itm.item(),
                   "itm_accuracy": itm_acc.item(), "predicted_tokens": float(where.sum()),
                   "masked_patches": float(target.shape[0])}
        if c.wra_weight > 0 and bool(scored.any()):
            special = self.special.to(labels.device)
            words = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(where)
            words = words & ~torch.isin(batch["input_ids"], special)  # (B, T) real, non-special tokens
            keep = scored & words.any(1)
            patches = torch.ones(out.image_states.shape[:2], dtype=torch.bool, device=labels.device)
            dist = wra_distance(out.text_states[keep], out.image_states[keep], words[keep], patches[keep],
                                c.ipot_beta, c.ipot_iterations)  # (B',)
            sign = torch.where(itm_labels[keep] == 1, 1.0, -1.0)  # matched pairs pulled together, others apart
            wra = (sign * dist).sum() / max(int(keep.sum()), 1)
            loss = loss + c.wra_weight * wra
            metrics["wra_loss"] = wra.item()
        metrics["loss"] = loss.item()
        return loss, metrics
