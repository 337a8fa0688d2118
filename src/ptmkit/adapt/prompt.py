"""Prompt tuning and P-tuning (v1): learned embeddings of virtual tokens placed before the input.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning": P soft-prompt vectors, trained
directly, initialised at random, from sampled vocabulary embeddings, or from the embeddings of a text (§3.2).
Liu et al. 2021, "GPT Understands, Too" (P-tuning): the virtual tokens come from a prompt encoder over pseudo-token
embeddings (a bidirectional LSTM then a two-layer MLP; or an MLP alone), which `bake` replaces by the table it
computes once trained. As PEFT: the prompt occupies positions 0..P-1 and the tokens follow; unlike PEFT's output,
the heads here see the real tokens only (the P prompt positions are dropped after the backbone), so [CLS]-pooled
classifiers, token labels and masked-LM positions keep their meaning.

Works on encoders and decoders (a backbone's `takes_soft_prompt`); encoder-decoders, XLNet and Transformer-XL refuse
(see their model files). During cached generation the prompt is fed once, with the first step, and stays in the
KV cache.
Not identity at initialisation; not mergeable.

Dimension legend: B batch, T tokens, P virtual tokens, E embedding width.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError

ATTR = "prompt"  # on the backbone
INITS = ("random", "vocab", "text")


@dataclass
class PromptConfig:
    num_virtual_tokens: int = 20  # soft prompt length: trained vectors put before the input embeddings
    init: str = "random"  # random | vocab (embeddings of random vocabulary tokens) | text (of init_ids, repeated)
    init_text: str = ""  # recorded for the reader; ptm finetune tokenises it into init_ids
    init_ids: list[int] = field(default_factory=list)  # token ids whose embeddings start the prompt (init "text")

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"prompt: num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.init not in INITS:
            raise ConfigError(f"prompt: init must be one of {INITS}, got {self.init!r}")
        if self.init == "text" and not (self.init_ids or self.init_text):
            raise ConfigError("prompt: init 'text' needs init_text (or its token ids, init_ids)")


@dataclass
class PTuningConfig(PromptConfig):
    encoder: str = "lstm"  # lstm (the paper: bi-LSTM then MLP) | mlp
    encoder_hidden: int = 0  # 0 = the embedding width

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ("lstm", "mlp"):
            raise ConfigError(f"ptuning: encoder must be lstm or mlp, got {self.encoder!r}")


class PromptEncoder(nn.Module):
    """P-tuning's reparameterisation of the pseudo-token embeddings (Liu et al. 2021 §3.2)."""

    def __init__(self, width: int, hidden: int, kind: str, like: torch.Tensor):
        super().__init__()
        opts = dict(dtype=like.dtype, device=like.device)
        self.lstm = None
        if kind == "lstm":  # bidirectional: the two directions' halves make `hidden`
            self.lstm = nn.LSTM(width, max(hidden // 2, 1), num_layers=2, bidirectional=True, batch_first=True, **opts)
            hidden = 2 * max(hidden // 2, 1)
        inner = hidden if kind == "lstm" else width
        self.mlp = nn.Sequential(nn.Linear(inner, hidden, **opts), nn.ReLU(), nn.Linear(hidden, width, **opts))

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # (P, E) -> (P, E)
        if self.lstm is not None:
            e = self.lstm(e[None])[0][0]  # (P, hidden)
        return self.mlp(e)


class SoftPrompt(base.Delta):
    """Runs around the backbone: prepends the prompt to the input embeddings (and masks), drops it from the output."""

    hook = "around"  # before() widens the inputs, after() drops the prompt positions

    def __init__(self, backbone: nn.Module, cfg: PromptConfig, encoder: PromptEncoder | None):
        super().__init__()
        table = backbone.input_embeddings().weight  # (V, E)
        p = cfg.num_virtual_tokens
        if cfg.init == "random":
            init = torch.empty(p, table.shape[1], dtype=table.dtype, device=table.device).uniform_(-0.5, 0.5)
        else:
            if cfg.init == "vocab":
                ids = torch.randint(0, table.shape[0], (p,), device=table.device)
            else:
                if not cfg.init_ids:
                    raise ConfigError("prompt: init_text must be tokenised into init_ids with the model's tokenizer "
                                      "(ptm finetune does it for --prompt.init_text)")
                ids = torch.tensor(cfg.init_ids, device=table.device).repeat((p + len(cfg.init_ids) - 1)
                                                                             // len(cfg.init_ids))[:p]
                if int(ids.max()) >= table.shape[0] or int(ids.min()) < 0:
                    raise ConfigError(f"prompt: init_ids must be token ids below the vocabulary size {table.shape[0]}")
            init = table.detach()[ids].clone()
        self.embedding = nn.Parameter(init)  # (P, E)
        self.encoder = encoder
        self.signature = inspect.signature(backbone.forward)
        self.prepended = False  # whether this call's output carries the prompt positions

    @property
    def length(self) -> int:
        return self.embedding.shape[0]

    def prompt(self) -> torch.Tensor:
        return self.encoder(self.embedding) if self.encoder is not None else self.embedding  # (P, E)

    def before(self, backbone, args, kwargs):
        self.prepended = False
        if not self.enabled:
            return None
        bound = self.signature.bind(*args, **kwargs)
        a = bound.arguments
        ids, embeds, cache = a.get("input_ids"), a.get("inputs_embeds"), a.get("cache")
        mask = a.get("attention_mask")
        p = self.length
        if mask is not None and mask.dim() != 2:
            raise ConfigError("prompt tuning: a (B, T, S) attention mask cannot be widened for the prompt; pass a "
                              "(B, T) padding mask")
        cached = cache is not None and cache.length > 0
        if mask is not None:
            a["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], p), mask], dim=1)  # (B, P+T)
        if cached:  # later generation steps: the prompt sits in the cache already
            return (), a
        if ids is None and embeds is None:
            return None
        if embeds is None:
            embeds = backbone.input_embeddings()(ids)  # (B, T, E)
        b = embeds.shape[0]
        a["input_ids"], a["inputs_embeds"] = None, torch.cat(
            [self.prompt().to(embeds.dtype).expand(b, -1, -1), embeds], dim=1)  # (B, P+T, E)
        if a.get("token_type_ids") is not None:
            tt = a["token_type_ids"]
            a["token_type_ids"] = torch.cat([tt.new_zeros(b, p), tt], dim=1)
        if a.get("position_ids") is not None:
            raise ConfigError("prompt tuning: explicit position_ids are not supported (the prompt takes positions "
                              "0..P-1 and the tokens follow); leave them out")
        if cache is not None and cache.max_len < cache.length + p + embeds.shape[1]:
            _grow(cache, p)
        self.prepended = True
        return (), a

    def after(self, backbone, args, kwargs, out):
        if not self.prepended:
            return None
        self.prepended = False
        p = self.length
        out.last_hidden_state = out.last_hidden_state[:, p:]  # (B, T, H): heads see the real tokens
        if out.hidden_states is not None:
            out.hidden_states = tuple(h[:, p:] for h in out.hidden_states)
        return out


def _grow(cache, extra: int) -> None:
    """Make room for the prompt in a pre-allocated KV cache sized for the tokens alone (ptmkit's generate)."""
    pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:3], extra, t.shape[4])], dim=3)  # noqa: E731
    cache.k, cache.v = pad(cache.k), pad(cache.v)
    cache.max_len += extra


def _backbone(model: nn.Module, name: str) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    if not getattr(backbone, "takes_soft_prompt", False):
        raise ConfigError(f"{name}: {type(backbone).__name__} does not take a soft prompt before its input (see "
                          "takes_soft_prompt in its model file); use LoRA, IA3 or prefix-tuning for this family")
    return backbone


def apply(model: nn.Module, cfg: PromptConfig, name: str = "prompt") -> nn.Module:
    backbone = _backbone(model, name)
    width = backbone.input_embeddings().embedding_dim
    encoder = None
    if isinstance(cfg, PTuningConfig):
        encoder = PromptEncoder(width, cfg.encoder_hidden or width, cfg.encoder, backbone.input_embeddings().weight)
    base.register(model, name, cfg)
    base.attach(base.Site("backbone", backbone), ATTR, SoftPrompt(backbone, cfg, encoder))
    return model


def apply_ptuning(model: nn.Module, cfg: PTuningConfig) -> nn.Module:
    return apply(model, cfg, "ptuning")


def bake(model: nn.Module) -> nn.Module:
    """Replace P-tuning's prompt encoder by the prompt it computes (after training only the prompt is needed)."""
    site = getattr(getattr(model, "backbone", model), ATTR, None)
    if site is None:
        raise ConfigError("bake: this model carries no soft prompt")
    if site.encoder is not None:
        with torch.no_grad():
            site.embedding = nn.Parameter(site.prompt().detach().clone())
        site.encoder = None
    return model
