"""Prompt-based fine-tuning (Schick & Schütze 2021, PET; Gao et al. 2021, LM-BFF): a classifier made of the
pre-trained LM itself. The input is wrapped in a template with a slot; the class logits are the LM's logits of the
label words at the slot — at the [MASK] for a masked LM, as the next token for a causal LM. No new head: the
pre-trained output layer scores the classes, which is why it needs few labelled examples.

PromptClassifier wraps a MaskedLM or CausalLM and looks to the rest of ptmkit like a sequence classifier (logits
(B, C)), so the one training engine, evaluation, delta methods and few-shot sampling all apply unchanged. With a
causal LM and LoRA this is classification recast as generation: the model is trained to generate the label word.

Dimension legend: B batch, T length, H hidden, V vocabulary, C classes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ptmkit.adapt.prompts import Template, Verbalizer
from ptmkit.config import ConfigError
from ptmkit.models.base import ModelOutput
from ptmkit.models.heads import CausalLM, MaskedLM


class PromptClassifier(nn.Module):
    task = "sequence-classification"

    def __init__(self, lm: nn.Module, label_ids: list[int], mask_id: int | None = None):
        super().__init__()
        if not isinstance(lm, (MaskedLM, CausalLM)):
            raise ConfigError(f"prompt-based fine-tuning scores label words with the model's LM head; this is a "
                              f"{getattr(lm, 'task', type(lm).__name__)} model: load one with its masked-lm or "
                              "causal-lm head (e.g. the directory ptm pretrain wrote, or SmolLM2)")
        if isinstance(lm, MaskedLM) and mask_id is None:
            raise ConfigError("prompt-based fine-tuning with a masked LM needs the tokenizer's mask token")
        self.lm = lm
        self.causal = isinstance(lm, CausalLM)
        self.mask_id = mask_id
        self.num_labels = len(label_ids)
        self.register_buffer("label_ids", torch.tensor(label_ids), persistent=False)

    @classmethod
    def from_template(cls, lm: nn.Module, template: Template, words: list[str], tokenizer,
                      names: list[str] | None = None) -> "PromptClassifier":
        """The classifier of `words` (one per class, in `names`' order) at `template`'s slot, each word taken with
        the space before the slot (Template.space_before_slot)."""
        ids = Verbalizer(words, tokenizer, template.space_before_slot, names).ids
        return cls(lm, ids, tokenizer.mask_id)

    @property
    def backbone(self):
        return self.lm.backbone

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs) -> ModelOutput:
        if self.causal:
            h = self.lm.backbone(input_ids, attention_mask).last_hidden_state  # (B, T, H)
            if attention_mask is None:
                last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device)
            else:  # the last real token (right padding): the label word comes next
                last = (attention_mask.bool() * torch.arange(h.shape[1], device=h.device)).argmax(-1)
            logits = self.lm.lm_head(h[torch.arange(h.shape[0], device=h.device), last])  # (B, V)
        else:
            slot = input_ids == self.mask_id  # (B, T)
            if not bool((slot.sum(1) == 1).all()):
                raise ConfigError("prompt-based fine-tuning: every input needs exactly one mask token (the slot); "
                                  "one was cut by truncation or the text holds the mask token itself: raise "
                                  "max_length or shorten the template")
            logits = self.lm(input_ids, attention_mask, token_type_ids, score_positions=slot).logits  # (B, V)
        return ModelOutput(logits[:, self.label_ids])  # (B, C)


def prompt_examples(data, template: Template, tokenizer, max_length: int, causal: bool):
    """The split with each example's text replaced by its filled template (text up to the slot for a causal LM,
    the template with the mask token for a masked LM). Long inputs are cut inside {text_a}/{text_b}, never in the
    template, so the slot survives."""
    mask = None if causal else tokenizer.special_tokens.get("mask")
    if not causal and mask is None:
        raise ConfigError("prompt-based fine-tuning with a masked LM needs a tokenizer with a mask token")
    overhead = len(tokenizer.encode(_fill(template, "", "", mask, causal), add_special_tokens=True))
    budget = max_length - overhead
    if budget < 4:
        raise ConfigError(f"the template takes {overhead} of max_length {max_length} tokens; raise max_length")
    out = []
    for e in data.examples:
        a, b = e.text_a, e.text_b
        ids_a = tokenizer.encode(a, add_special_tokens=False)
        ids_b = tokenizer.encode(b, add_special_tokens=False) if b else []
        if len(ids_a) + len(ids_b) > budget:  # cut the longer text first, as transformers' longest_first
            while len(ids_a) + len(ids_b) > budget:
                if len(ids_a) >= len(ids_b):
                    ids_a = ids_a[:-1]
                else:
                    ids_b = ids_b[:-1]
            a = tokenizer.decode(ids_a)
            b = tokenizer.decode(ids_b) if b else b
        out.append(dataclasses.replace(e, text_a=_fill(template, a, b, mask, causal), text_b=None))
    return dataclasses.replace(data, examples=out)


def _fill(template: Template, a: str, b: str | None, mask: str | None, causal: bool) -> str:
    if causal:
        return template.before_slot(a, b if template.pair else None)[0]
    return template.fill(a, b if template.pair else None, mask)
