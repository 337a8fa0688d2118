"""Sequence-to-sequence language-model head (T5, BART, mBART) and its autoregressive decoding.

The encoder runs once per source batch; the decoder then emits one token per step, reading its own KV cache
and cross-attention keys/values projected once from the encoder output. Greedy, temperature, top-k and
top-p (Holtzman et al. 2020) decoding with stop tokens, as for causal LMs (models/generate.py).
Dimension legend: B batch, S source length, T target length, H hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ptmkit.models.encdec import EncoderDecoderBackbone, Seq2SeqOutput
from ptmkit.models.generate import _check, next_token
from ptmkit.models.heads import TaskModel


class Seq2SeqLM(TaskModel):
    """Decoder states → (family output scale) → vocabulary projection (+ BART's final_logits_bias)."""

    task = "seq2seq-lm"

    def __init__(self, backbone: EncoderDecoderBackbone, tie_word_embeddings: bool | None = None):
        super().__init__(backbone)
        c = backbone.config
        if tie_word_embeddings is None:
            tie_word_embeddings = getattr(c, "tie_word_embeddings", True)
        if tie_word_embeddings != getattr(c, "tie_word_embeddings", tie_word_embeddings):
            raise ValueError("tie_word_embeddings must agree with the backbone config (it also sets T5's output scale)")
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = backbone.input_embeddings().weight  # Press & Wolf 2017
        else:
            backbone.init_output(self.lm_head)
        if backbone.lm_bias:
            # A buffer, not a parameter: fairseq/transformers keep it fixed (zero unless a checkpoint sets it).
            self.register_buffer("final_logits_bias", torch.zeros(1, c.vocab_size))

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.backbone.input_embeddings().weight

    def forward(
        self,
        input_ids=None,  # (B, S)
        attention_mask=None,  # (B, S)
        decoder_input_ids=None,  # (B, T)
        decoder_attention_mask=None,  # (B, P)
        encoder_outputs=None,
        cache=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,  # > 0: only the last n target positions get logits (generation)
    ) -> Seq2SeqOutput:
        out = self.backbone(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                            cache, inputs_embeds, decoder_inputs_embeds, output_hidden_states)
        h = out.last_hidden_state if logits_to_keep <= 0 else out.last_hidden_state[:, -logits_to_keep:]
        scale = self.backbone.output_scale()
        logits = self.lm_head(h * scale if scale != 1.0 else h)  # (B, T, V)
        if self.backbone.lm_bias:
            logits = logits + self.final_logits_bias.to(logits.dtype)
        out.logits = logits
        return out

    def generate(self, input_ids, **kwargs) -> torch.Tensor:
        return generate(self, input_ids, **kwargs)


@torch.no_grad()
def generate(
    model: Seq2SeqLM,
    input_ids: torch.Tensor,  # (B, S) source tokens (any padding side: positions do not depend on it)
    attention_mask: torch.Tensor | None = None,  # (B, S)
    max_new_tokens: int = 32,
    temperature: float = 0.0,  # 0 = greedy
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Iterable[int] = (),
    pad_token_id: int | None = None,  # fills rows after their stop token; default: the model's pad token
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    decoder_start_token_id: int | None = None,  # default: the config's (T5: pad, BART: </s>; mBART: language id)
    decoder_input_ids: torch.Tensor | None = None,  # (B, T0) a forced target prefix, same length in every row
) -> torch.Tensor:
    """Return the decoder tokens (B, T0 + n), starting with the decoder start token (as transformers does)."""
    _check(temperature, top_k, top_p, max_new_tokens)
    model.eval()
    bb, cfg = model.backbone, model.config
    b, device = input_ids.shape[0], input_ids.device
    if decoder_input_ids is None:
        start = decoder_start_token_id if decoder_start_token_id is not None else cfg.decoder_start_token_id
        if start is None:
            raise ValueError(f"{bb.family} has no default decoder_start_token_id: pass decoder_start_token_id "
                             "(for mBART, the target language code) or decoder_input_ids")
        decoder_input_ids = torch.full((b, 1), start, dtype=torch.long, device=device)
    t0 = decoder_input_ids.shape[1]
    max_pos = bb.decoder.max_positions
    if max_pos is not None and t0 + max_new_tokens > max_pos:
        raise ValueError(
            f"target prefix ({t0}) + max_new_tokens ({max_new_tokens}) exceeds the model's {max_pos} positions"
        )
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    if pad_token_id is None:
        pad_token_id = getattr(cfg, "pad_token_id", None)
    fill = pad_token_id if pad_token_id is not None else (int(stops[0]) if len(stops) else 0)

    memory = bb.encode(input_ids, attention_mask).last_hidden_state  # (B, S, H): the encoder runs once
    cache = bb.new_cache(b, t0 + max_new_tokens, memory.dtype, device) if use_cache else None
    tokens, step_input = decoder_input_ids, decoder_input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = model(attention_mask=attention_mask, decoder_input_ids=step_input if use_cache else tokens,
                       encoder_outputs=memory, cache=cache, logits_to_keep=1).logits[:, -1]  # (B, V)
        nxt = next_token(logits, temperature, top_k, top_p, generator, finished, fill)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if len(stops):
            finished |= torch.isin(nxt, stops)
            if bool(finished.all()):
                break
    return tokens
