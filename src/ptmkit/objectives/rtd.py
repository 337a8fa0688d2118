"""Replaced-token detection (Clark et al. 2020, ELECTRA §2–3; survey §3.2/§4): a small masked-LM generator fills
the masked positions with samples, and the model (the discriminator) labels every token original or replaced.

Clark, Luong, Le, Manning. "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators." ICLR 2020.

The generator is an auxiliary network and belongs to this objective: `bind(model)` builds it on the model's own
embedding module (§3.2 weight sharing) and returns it so the trainer optimises and checkpoints it too.

Dimension legend: B batch, T length, N masked positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.bert import BertConfig
from ptmkit.models.electra import ElectraConfig, ElectraEncoder, ElectraMaskedLM
from ptmkit.models.registry import backbone_of
from ptmkit.nn import Embeddings
from ptmkit.objectives.base import Batch, document_mask


@dataclass
class RTDConfig:
    mask_prob: float = 0.15  # fraction of maskable tokens the generator fills in (§3; 0.25 for ELECTRA-Large)
    mask_token_fraction: float = 0.85  # of those, shown to the generator as [MASK]; the rest unchanged (released code)
    generator_size_ratio: float = 0.25  # generator width / discriminator width (§3.2: 1/4 to 1/2 works best)
    disc_weight: float = 50.0  # λ in L_MLM + λ·L_Disc (§3)
    mask_token_id: int = -1  # filled from the tokenizer when -1
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never masked ([CLS], [SEP], [PAD], ...)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"rtd: mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.mask_token_fraction <= 1.0:
            raise ConfigError(f"rtd: mask_token_fraction must be in [0, 1], got {self.mask_token_fraction}")
        if not 0.0 < self.generator_size_ratio <= 1.0:
            raise ConfigError(
                f"rtd: generator_size_ratio must be in (0, 1] (the generator is at most as wide as the discriminator; "
                f"the paper uses 1/4 to 1/2), got {self.generator_size_ratio}"
            )
        if not self.disc_weight > 0:
            raise ConfigError(f"rtd: disc_weight (λ) must be > 0 (the paper uses 50), got {self.disc_weight}")

    def check_ready(self) -> None:
        if self.mask_token_id < 0 or self.vocab_size <= 0:
            raise ConfigError("rtd: mask_token_id and vocab_size must be set (the tokenizer needs a mask token)")
        if self.mask_token_id >= self.vocab_size:
            raise ConfigError(f"rtd: mask_token_id {self.mask_token_id} is outside the vocabulary ({self.vocab_size})")


def generator_config(c: BertConfig, embedding_size: int, ratio: float) -> ElectraConfig:
    """The generator's shape from the discriminator's, as ELECTRA's `get_generator_config`: width and feed-forward
    scaled by `ratio`, the same depth, heads keeping the discriminator's head size (at least one)."""
    hidden = max(1, round(c.hidden_size * ratio))
    heads = max(1, hidden // (c.hidden_size // c.num_heads))
    while hidden % heads:
        heads -= 1
    shared = {f.name: getattr(c, f.name) for f in dataclasses.fields(BertConfig)}
    return ElectraConfig(**{**shared, "hidden_size": hidden, "num_heads": heads,
                            "intermediate_size": max(1, round(c.intermediate_size * ratio)),
                            "embedding_size": embedding_size})


def sample_tokens(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(logits) (temperature 1) by inverting the CDF at `noise` ~ U[0, 1).

    logits (N, V), noise (N,) -> token ids (N,). Token i is drawn iff cdf[i-1] <= u < cdf[i], so exactly with
    probability p_i, and the draw is a pure function of the logits and the (seeded) noise.
    """
    cdf = logits.float().softmax(-1).cumsum(-1)  # (N, V)
    idx = torch.searchsorted(cdf, noise.to(cdf.dtype)[:, None], right=True).squeeze(-1)  # (N,)
    return idx.clamp_max(logits.shape[-1] - 1)  # rounding can leave cdf[-1] a hair below u


class ReplacedTokenDetection:
    task = "replaced-token-detection"

    def __init__(self, cfg: RTDConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self.generator: nn.Module | None = None  # built by bind()
        self._shared: nn.Module | None = None  # the embeddings module the generator shares

    # ---- auxiliary network ------------------------------------------------------------------------------------
    def exports(self) -> dict[str, nn.Module]:
        """Models this objective trains besides the discriminator, saved beside it: the generator is a usable MLM."""
        return {"generator": self.generator} if self.generator is not None else {}

    def bind(self, model: nn.Module) -> nn.Module:
        """Build the generator on `model`'s embeddings (once per model) and return it for the optimizer/checkpoint."""
        backbone = backbone_of(model)
        if self.generator is not None and self._shared is backbone.embeddings:
            return self.generator
        if backbone.causal or not isinstance(getattr(backbone, "embeddings", None), Embeddings):
            raise ConfigError(f"rtd: the discriminator must be an encoder with token embeddings; got {backbone.family}")
        emb = backbone.embeddings
        cfg = generator_config(backbone.config, emb.tok.embedding_dim, self.cfg.generator_size_ratio)
        # ELECTRA §3.2: the generator uses the discriminator's token and position (and segment) embeddings, and
        # ties its output matrix to them; a narrower generator projects E → its own width.
        generator = ElectraMaskedLM(ElectraEncoder(cfg, embeddings=emb))
        self.generator = generator.to(emb.tok.weight.device)
        self._shared = emb
        return self.generator

    def _bound_generator(self, model) -> nn.Module:
        if self.generator is None or self._shared is not backbone_of(model).embeddings:
            raise RuntimeError(
                "rtd: the generator is not bound to this model; call objective.bind(model) before loss() "
                "(ptmkit.train.loop.train does) and optimise the module it returns"
            )
        return self.generator

    # ---- data side ----------------------------------------------------------------------------------------------
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Choose positions and show them to the generator as [MASK]; also draw the uniform noise that loss() uses
        to sample replacements, so a batch's replacements are reproducible from its seed."""
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        maskable = ~torch.isin(ids, self._special)
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].bool()
        chosen = (torch.rand(ids.shape, generator=generator) < c.mask_prob) & maskable
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        to_mask = chosen & (torch.rand(ids.shape, generator=generator) < c.mask_token_fraction)
        masked = torch.where(to_mask, torch.full_like(ids, c.mask_token_id), ids)
        noise = torch.rand(ids.shape, generator=generator)  # (B, T) U[0, 1)
        return {**batch, "input_ids": masked, "labels": labels, "sample_noise": noise}

    # ---- model side ---------------------------------------------------------------------------------------------
    def losses(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        """Both losses and the intermediate tensors (for tests and analysis); loss() combines them."""
        generator = self._bound_generator(model)
        generator.train(model.training)  # the generator follows the model into eval() (no dropout)
        labels = batch["labels"]  # (B, T), -100 = not chosen
        chosen = labels != -100
        mask = batch.get("attention_mask")
        if "document_ids" in batch:
            mask = document_mask(batch["document_ids"])  # packed documents do not see each other
        kw = dict(attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
                  position_ids=batch.get("position_ids"))

        # 1. generator: masked LM on the chosen positions only
        gen_logits = generator(batch["input_ids"], score_positions=chosen, **kw).logits  # (N, V)
        target = labels[chosen]  # (N,)
        if target.numel():
            gen_loss = F.cross_entropy(gen_logits.float(), target)
        else:
            gen_loss = gen_logits.float().sum() * 0.0  # nothing chosen in this batch

        # 2. replacements sampled from the generator. No gradient flows through the sampling (§2: the generator
        #    is trained by maximum likelihood, not adversarially to fool the discriminator).
        with torch.no_grad():
            noise = batch.get("sample_noise")
            noise = torch.rand(labels.shape, device=labels.device) if noise is None else noise
            original = torch.where(chosen, labels, batch["input_ids"])  # (B, T)
            replaced_ids = original.clone()
            replaced_ids[chosen] = sample_tokens(gen_logits.detach(), noise[chosen])
            is_replaced = replaced_ids != original  # (B, T): a sample equal to the original counts as original

        # 3. discriminator: original or replaced, on every real token (§2; padding excluded)
        disc_logits = model(replaced_ids, **kw).logits  # (B, T)
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(chosen)
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits[real].float(), is_replaced[real].float())
        return {"gen_loss": gen_loss, "disc_loss": disc_loss, "gen_logits": gen_logits, "target": target,
                "disc_logits": disc_logits, "is_replaced": is_replaced, "replaced_ids": replaced_ids, "real": real}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.losses(model, batch)
        loss = out["gen_loss"] + self.cfg.disc_weight * out["disc_loss"]  # §3: L_MLM + λ·L_Disc
        with torch.no_grad():
            real, is_replaced = out["real"], out["is_replaced"]
            disc_acc = ((out["disc_logits"][real] > 0) == is_replaced[real]).float().mean()
            gen_acc = (out["gen_logits"].argmax(-1) == out["target"]).float().mean() if out["target"].numel() else None
        metrics = {"loss": loss.item(), "mlm_loss": out["gen_loss"].item(), "rtd_loss": out["disc_loss"].item(),
                   "rtd_accuracy": disc_acc.item(), "replaced_fraction": is_replaced[real].float().mean().item(),
                   "predicted_tokens": float(real.sum())}
        if gen_acc is not None:
            metrics["mlm_accuracy"] = gen_acc.item()
        return loss, metrics
