"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"): a dual
encoder. A Vision Transformer reads the image (§2.4: ViT with an extra LayerNorm before the Transformer, the class
token's final state LayerNorm-ed as the image vector) and a causal Transformer reads the text (§2.4: GPT-2-style
pre-norm blocks with masked self-attention; the final state of the end-of-text token is the text vector); linear
projections map both into one embedding space, where the cosine similarity times a learned temperature is the logit
of an image-text pair (§2.5, Figure 3). Training (objectives/clip.py) is the symmetric InfoNCE over a batch.

Layout and names follow transformers' CLIPModel (quick-GELU, pre_layrnorm, post_layernorm on the pooled state only,
no bias in the patch projection nor in the two projections), so CLIPModel checkpoints load and export unchanged
(models/convert/clip.py).

Dimension legend: B batch (images or texts), T text length, S image side, N patches, H tower width, P projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, stack_forward
from ptmkit.models.vit import VisionOutput, pre_norm_stack
from ptmkit.nn import Embeddings, build_mask
from ptmkit.nn.feedforward import get_activation
from ptmkit.nn.patches import ImageEmbeddings, check_patch_grid

# Radford et al. 2021 §2.5: the temperature is "clipped to prevent scaling the logits by more than 100".
MAX_LOGIT_SCALE = 100.0
# transformers' CLIPTextModel before its PR #24773 pooled the highest token id (OpenAI's tokenizer puts end-of-text
# last); configs of that time carry eos_token_id 2, which transformers keeps reading as "argmax of the ids".
LEGACY_EOS_ID = 2


def _check_tower(where: str, c) -> None:
    check_positive(where, hidden_size=c.hidden_size, num_layers=c.num_layers, num_heads=c.num_heads,
                   intermediate_size=c.intermediate_size)
    if c.hidden_size % c.num_heads:
        raise ConfigError(f"{where}: hidden_size {c.hidden_size} is not divisible by num_heads {c.num_heads}; "
                          f"pick a head count that divides it (e.g. {c.hidden_size // 64 or 1})")
    if not 0.0 <= c.attention_dropout < 1.0:
        raise ConfigError(f"{where}: attention_dropout must be in [0, 1)")
    get_activation(c.hidden_act)


@dataclass
class CLIPTextConfig:
    # Defaults: the text tower of CLIP ViT-B/32 (Radford et al. 2021 §2.4: 63M parameters, 12 layers, width 512,
    # 8 heads, 76 tokens + end-of-text, vocabulary 49,152 + 256 bytes)
    vocab_size: int = 49408
    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 77  # the longest caption, in tokens with its start and end tokens
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # the text vector is the final state of the first token with this id (2: the highest id)
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _check_tower("CLIPTextConfig", self)
        check_positive("CLIPTextConfig", vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings)


@dataclass
class CLIPVisionConfig:
    # Defaults: CLIP ViT-B/32 at 224 px
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _check_tower("CLIPVisionConfig", self)
        check_positive("CLIPVisionConfig", num_channels=self.num_channels)
        check_patch_grid("CLIPVisionConfig", self.image_size, self.patch_size)


@dataclass
class CLIPConfig:
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512  # width of the joint embedding space
    logit_scale_init: float = math.log(1 / 0.07)  # §2.5: temperature initialised to 0.07
    initializer_factor: float = 1.0  # scales every initial weight's std (transformers' initializer_factor)

    def __post_init__(self) -> None:
        check_positive("CLIPConfig", projection_dim=self.projection_dim, initializer_factor=self.initializer_factor)
        if not self.logit_scale_init <= math.log(MAX_LOGIT_SCALE):
            raise ConfigError(f"CLIPConfig: logit_scale_init {self.logit_scale_init} exceeds ln({MAX_LOGIT_SCALE:g}); "
                              "CLIP caps the logit scale at 100 (Radford et al. 2021 §2.5)")

    # Read by code that sizes a model from its text side (check_vocab, the trainer's logs).
    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text.hidden_size

    @property
    def num_layers(self) -> int:
        return self.text.num_layers + self.vision.num_layers

    @classmethod
    def tokenizer_defaults(cls, params: dict, tokenizer) -> dict:
        """`params` (a config dict) with the text tower's vocabulary and special ids taken from `tokenizer` where
        not set: what ptm pretrain builds a fresh model with."""
        text = dict(params.get("text") or {})
        text.setdefault("vocab_size", tokenizer.vocab_size)
        for key, value in (("pad_token_id", tokenizer.pad_id), ("bos_token_id", tokenizer.bos_id),
                           ("eos_token_id", tokenizer.eos_id)):
            if value is not None:
                text.setdefault(key, value)
        return {**params, "text": text}


@dataclass
class TextOutput:
    last_hidden_state: torch.Tensor  # (B, T, H) after the final LayerNorm
    pooler_output: torch.Tensor  # (B, H): the end-of-text token's state
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPOutput:
    logits_per_image: torch.Tensor  # (B_image, B_text): scale * cos(image_i, text_j)
    logits_per_text: torch.Tensor  # (B_text, B_image), its transpose
    text_embeds: torch.Tensor  # (B_text, P), unit length
    image_embeds: torch.Tensor  # (B_image, P), unit length
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, T) ids -> (B,) position of the token whose final state is the text vector: the first eos_token_id, or
    with a legacy config (eos_token_id 2) the highest id, as transformers' CLIPTextModel decides."""
    if eos_token_id == LEGACY_EOS_ID:
        return input_ids.to(torch.int).argmax(dim=-1)
    is_eos = input_ids == eos_token_id  # (B, T)
    if input_ids.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(is_eos.any(-1).all()):
        row = int((~is_eos.any(-1)).nonzero()[0])
        raise ValueError(f"text row {row} has no end-of-text token (id {eos_token_id}): CLIP's text vector is that "
                         "token's final state; encode captions with the tokenizer's special tokens, and truncate "
                         "them keeping the last one")
    return is_eos.to(torch.int).argmax(dim=-1)  # (B,)


class CLIPTextTower(nn.Module):
    """Token + position embeddings, causal pre-norm blocks, final LayerNorm; pooled at the end-of-text token."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings)
        self.layers = pre_norm_stack(c.hidden_size, c.num_heads, c.intermediate_size, c.num_layers, c.hidden_act,
                                     c.layer_norm_eps, 0.0, c.attention_dropout)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> TextOutput:
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(f"texts of {t} tokens exceed the text tower's {self.config.max_position_embeddings} "
                             "positions; truncate captions to max_position_embeddings (the data pipeline does, "
                             "keeping the end-of-text token)")
        pos = torch.arange(t, device=input_ids.device)[None].expand(b, t)  # (B, T)
        x = self.embeddings(input_ids, pos)  # (B, T, H)
        # §2.4 "masked self-attention": causal, so right padding never reaches a real token; the padding mask keeps
        # the padded rows' own states equal to transformers' too
        mask, is_causal = build_mask(attention_mask, t, t, causal=True, device=x.device)
        x, hidden = stack_forward(self.layers, x, mask, is_causal, None, None, output_hidden_states)
        x = self.norm(x)  # (B, T, H)
        pooled = x[torch.arange(b, device=x.device), eos_positions(input_ids, self.config.eos_token_id)]  # (B, H)
        return TextOutput(x, pooled, tuple(hidden) if hidden else None)


class CLIPVisionTower(nn.Module):
    """Patch + class + position embeddings, a LayerNorm before the blocks (§2.4: "an additional layer normalization to
    the combined patch and position embeddings"), pre-norm blocks, and a LayerNorm on the class token's state."""

    def __init__(self, c: CLIPVisionConfig):
        super().__init__()
        self.config = c
        self.embeddings = ImageEmbeddings(c.image_size, c.patch_size, c.num_channels, c.hidden_size,
                                          patch_bias=False)
        self.pre_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = pre_norm_stack(c.hidden_size, c.num_heads, c.intermediate_size, c.num_layers, c.hidden_act,
                                     c.layer_norm_eps, 0.0, c.attention_dropout)
        self.post_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        x = self.pre_norm(self.embeddings(pixel_values))  # (B, 1 + N, H)
        x, hidden = stack_forward(self.layers, x, None, False, None, None, output_hidden_states)
        return VisionOutput(x, self.post_norm(x[:, 0]), tuple(hidden) if hidden else None)  # pooled: (B, H)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, H) final patch states (no class token): image tokens for other vision-language models."""
        return self.forward(pixel_values).last_hidden_state[:, 1:]


class CLIPModel(Backbone):
    family = "clip"
    causal = False
    takes_soft_prompt = False
    bias_names = ("logit_scale",)  # no weight decay on the temperature (train/optim.py reads this), as in open_clip

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = c = config
        self.text = CLIPTextTower(c.text)
        self.vision = CLIPVisionTower(c.vision)
        self.text_projection = nn.Linear(c.text.hidden_size, c.projection_dim, bias=False)
        self.visual_projection = nn.Linear(c.vision.hidden_size, c.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))  # log of 1 / temperature
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """OpenAI CLIP's `initialize_parameters` (as transformers' CLIPPreTrainedModel): embeddings N(0, 0.02);
        attention and MLP input projections scaled by width^-1/2 and depth (2L)^-1/2 so the residual stream keeps its
        scale; output projections by width^-1/2; the joint projections by the tower width^-1/2."""
        f = self.config.initializer_factor
        for tower in (self.text, self.vision):
            c = tower.config
            h, depth = c.hidden_size, (2 * c.num_layers) ** -0.5
            for block in tower.layers:
                nn.init.normal_(block.attn.qkv.weight, std=h ** -0.5 * depth * f)
                nn.init.normal_(block.attn.out.weight, std=h ** -0.5 * f)
                nn.init.normal_(block.ffn.up.weight, std=(2 * h) ** -0.5 * f)
                nn.init.normal_(block.ffn.down.weight, std=h ** -0.5 * depth * f)
                for lin in (block.attn.qkv, block.attn.out, block.ffn.up, block.ffn.down):
                    nn.init.zeros_(lin.bias)
        nn.init.normal_(self.text.embeddings.tok.weight, std=0.02 * f)
        nn.init.normal_(self.text.embeddings.pos.weight, std=0.02 * f)
        v = self.config.vision
        self.vision.embeddings.init_weights(v.initializer_range * f, cls_std=v.hidden_size ** -0.5 * f)
        nn.init.normal_(self.text_projection.weight, std=self.config.text.hidden_size ** -0.5 * f)
        nn.init.normal_(self.visual_projection.weight, std=v.hidden_size ** -0.5 * f)

    def input_embeddings(self) -> nn.Embedding:
        return self.text.embeddings.tok

    def scale(self, cap: float = MAX_LOGIT_SCALE) -> torch.Tensor:
        """exp(logit_scale) capped at `cap` (§2.5). OpenAI clamps the parameter after each update; clamping here
        gives the same logits, stops the gradient at the cap, and leaves transformers' logits unchanged for every
        released checkpoint (their logit_scale is at most ln 100)."""
        return self.logit_scale.clamp(max=math.log(cap)).exp()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, P) projected image vectors, not normalised (transformers' get_image_features)."""
        return self.visual_projection(self.vision(pixel_values).pooler_output)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, P) projected text vectors, not normalised (transformers' get_text_features)."""
        return self.text_projection(self.text(input_ids, attention_mask).pooler_output)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False) -> CLIPOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIPModel needs both input_ids and pixel_values; use encode_text / encode_image for "
                             "one side")
        vis = self.vision(pixel_values, output_hidden_states)
        txt = self.text(input_ids, attention_mask, output_hidden_states)
        image = F.normalize(self.visual_projection(vis.pooler_output), dim=-1)  # (B_image, P)
        text = F.normalize(self.text_projection(txt.pooler_output), dim=-1)  # (B_text, P)
        logits_per_text = self.scale() * text @ image.T  # (B_text, B_image)
        return CLIPOutput(logits_per_text.T, logits_per_text, text, image, txt.hidden_states, vis.hidden_states)



# The family's own heads (models/registry.py): contrastive pre-training trains the dual encoder as it is.
CLIP_HEADS = {"image-text-contrastive": lambda backbone: backbone}
