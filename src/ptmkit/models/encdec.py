"""The machinery shared by encoder-decoder families (T5, BART, mBART): stacks, cache and output record.

Vaswani et al. 2017 §3.1: the encoder reads the source once; every decoder layer attends causally to the
target prefix and, through cross-attention, to the encoder output ("memory"). For generation the decoder
keeps a self-attention KV cache and projects the memory into cross-attention keys/values only once.
Dimension legend: B batch, S source length, T new target tokens, P cached + new target tokens, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.models.base import Backbone, BackboneOutput, init_normal
from ptmkit.nn import CrossKVCache, KVCache, RelativePositionBias, add_bias, build_mask


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor | None = None  # (B, T, V) with a language-model head
    last_hidden_state: torch.Tensor | None = None  # (B, T, H) decoder output
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None  # decoder input, then each layer's output
    encoder_last_hidden_state: torch.Tensor | None = None  # (B, S, H)
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: "Seq2SeqCache | None" = None


class Seq2SeqCache:
    """Decoder self-attention keys/values (pre-allocated) plus the encoder's cross-attention keys/values."""

    def __init__(self, self_attn: KVCache, cross: CrossKVCache | None = None):
        self.self_attn = self_attn
        self.cross = cross if cross is not None else CrossKVCache()

    @property
    def length(self) -> int:
        return self.self_attn.length

    def reorder(self, index: torch.Tensor) -> None:
        self.self_attn.reorder(index)
        self.cross.reorder(index)


class _Stack(nn.Module):
    """Parts common to both stacks. Optional parts are None: learned positions (BART, offset by 2 in fairseq
    checkpoints), an embedding LayerNorm (BART's layernorm_embedding), a relative position bias (T5), a final
    norm (pre-norm stacks: T5, mBART)."""

    def __init__(
        self,
        layers: nn.ModuleList,
        positions: nn.Embedding | None = None,
        position_offset: int = 0,
        embed_norm: nn.Module | None = None,
        rel_bias: RelativePositionBias | None = None,
        final_norm: nn.Module | None = None,
        dropout: float = 0.0,
        out_dropout: float = 0.0,  # T5 applies dropout once more after the final norm
    ):
        super().__init__()
        self.layers = layers
        self.positions, self.position_offset = positions, position_offset
        self.embed_norm, self.rel_bias, self.final_norm = embed_norm, rel_bias, final_norm
        self.drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(out_dropout)

    @property
    def max_positions(self) -> int | None:
        return None if self.positions is None else self.positions.num_embeddings - self.position_offset

    def _embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        t = x.shape[1]
        if self.positions is not None:
            if start + t > self.max_positions:
                raise ValueError(
                    f"position {start + t - 1} is beyond the model's {self.max_positions} learned positions; "
                    "truncate the sequence to max_position_embeddings"
                )
            pos = torch.arange(start, start + t, device=x.device) + self.position_offset  # (T,)
            x = x + self.positions(pos)  # (B, T, H)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x)

    def _finish(self, x: torch.Tensor, hidden: list | None) -> tuple[torch.Tensor, tuple | None]:
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = self.out_drop(x)
        if hidden is not None:
            hidden[-1] = x  # HF convention: the last hidden state is after the final norm
        return x, tuple(hidden) if hidden is not None else None


class EncoderStack(_Stack):
    """Embedded source → positions/norm/dropout → bidirectional blocks → final norm."""

    def forward(
        self,
        x: torch.Tensor,  # (B, S, H) token embeddings
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = token, 0 = padding
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        s = x.shape[1]
        x = self._embed(x, 0)
        mask, _ = build_mask(attention_mask, s, s, causal=False, device=x.device)  # (B, 1, 1, S) or None
        if self.rel_bias is not None:
            mask = add_bias(mask, False, self.rel_bias(s, s).to(x.dtype))  # (B|1, H, S, S) float
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.layers):
            x = block(x, mask, False, None, None, i)
            if hidden is not None:
                hidden.append(x)
        x, hidden = self._finish(x, hidden)
        return BackboneOutput(x, hidden)


class DecoderStack(_Stack):
    """Embedded target prefix → positions/norm/dropout → causal self-attn + cross-attn blocks → final norm."""

    def forward(
        self,
        x: torch.Tensor,  # (B, T, H) token embeddings of the new target tokens
        memory: torch.Tensor | None,  # (B, S, H) encoder output (may be None once the cross cache is filled)
        memory_mask: torch.Tensor | None = None,  # (B, S) source padding mask
        attention_mask: torch.Tensor | None = None,  # (B, P) target padding mask, covering cached tokens too
        cache: Seq2SeqCache | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        b, t, _ = x.shape
        past = cache.length if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[-1] != past + t:
            raise ValueError(
                f"decoder_attention_mask covers {attention_mask.shape[-1]} tokens but the cache holds {past} and "
                f"{t} are new; pass a mask over all {past + t}"
            )
        x = self._embed(x, past)
        mask, is_causal = build_mask(attention_mask, t, past + t, causal=True, device=x.device)
        if self.rel_bias is not None:
            mask, is_causal = add_bias(mask, is_causal, self.rel_bias(t, past + t).to(x.dtype)), False
        s = memory.shape[1] if memory is not None else cache.cross.kv[0][0].shape[2]
        mem_mask, _ = build_mask(memory_mask, t, s, causal=False, device=x.device)  # (B, 1, 1, S) or None
        self_cache = cache.self_attn if cache is not None else None
        cross_cache = cache.cross if cache is not None else None
        hidden = [x] if output_hidden_states else None
        for i, block in enumerate(self.layers):
            x = block(x, memory, mask, is_causal, mem_mask, self_cache, cross_cache, i)
            if hidden is not None:
                hidden.append(x)
        x, hidden = self._finish(x, hidden)
        if cache is not None:
            cache.self_attn.advance(t)
        return BackboneOutput(x, hidden, cache)


class EncoderDecoderBackbone(Backbone):
    # a prompt widens the encoder output, but generation encodes separately and passes the source mask to the
    # decoder as it is: not supported until both follow the prompt
    takes_soft_prompt = False
    """Subclasses build self.shared (token embedding used by both stacks and, when tied, the LM head),
    self.encoder (EncoderStack) and self.decoder (DecoderStack), and may set embed_scale and lm_bias."""

    causal = False
    is_encoder_decoder = True
    lm_bias = False  # BART: the LM head adds a fixed final_logits_bias buffer
    embed_scale = 1.0  # multiplies token embeddings looked up from ids (sqrt(d_model) in mBART)

    def input_embeddings(self) -> nn.Embedding:
        return self.shared

    def output_scale(self) -> float:
        """Factor on the decoder output before the LM head (T5 with tied embeddings: d_model ** -0.5)."""
        return 1.0

    def init_output(self, lm_head: nn.Linear) -> None:
        init_normal(lm_head, self.config.initializer_range)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device) -> Seq2SeqCache:
        attn = self.decoder.layers[0].attn
        kv = max(block.attn.kv for block in self.decoder.layers)  # layers differ once heads are pruned
        return Seq2SeqCache(KVCache(len(self.decoder.layers), batch, kv, attn.d, max_len, dtype, device))

    def _embed_tokens(self, ids: torch.Tensor | None, embeds: torch.Tensor | None, what: str) -> torch.Tensor:
        if (ids is None) == (embeds is None):
            raise ValueError(f"pass exactly one of {what}_ids and {what}_embeds")
        return embeds if embeds is not None else self.shared(ids) * self.embed_scale

    def encode(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        inputs_embeds: torch.Tensor | None = None,  # (B, S, H)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        return self.encoder(self._embed_tokens(input_ids, inputs_embeds, "input"), attention_mask, output_hidden_states)

    def decode(
        self,
        decoder_input_ids: torch.Tensor | None,  # (B, T)
        encoder_hidden_states: torch.Tensor | None,  # (B, S, H)
        attention_mask: torch.Tensor | None = None,  # (B, S) source padding
        decoder_attention_mask: torch.Tensor | None = None,  # (B, P)
        cache: Seq2SeqCache | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        if encoder_hidden_states is None and (cache is None or 0 not in cache.cross):
            raise ValueError("decoding needs encoder_hidden_states (or a cache that already holds them)")
        x = self._embed_tokens(decoder_input_ids, decoder_inputs_embeds, "decoder_input")
        return self.decoder(x, encoder_hidden_states, attention_mask, decoder_attention_mask, cache,
                            output_hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S) source tokens
        attention_mask: torch.Tensor | None = None,  # (B, S)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T) target prefix, starting with decoder_start_token_id
        decoder_attention_mask: torch.Tensor | None = None,  # (B, P)
        encoder_outputs: BackboneOutput | torch.Tensor | None = None,  # reuse an encoder pass (generation)
        cache: Seq2SeqCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Seq2SeqOutput:
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "decoder_input_ids are required: the target shifted right behind decoder_start_token_id "
                "(see ptmkit.models.encdec.shift_right)"
            )
        if encoder_outputs is None:
            enc = self.encode(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        elif isinstance(encoder_outputs, torch.Tensor):
            enc = BackboneOutput(encoder_outputs)
        else:
            enc = encoder_outputs
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask, cache,
                          decoder_inputs_embeds, output_hidden_states)
        return Seq2SeqOutput(None, dec.last_hidden_state, dec.hidden_states, enc.last_hidden_state,
                             enc.hidden_states, dec.cache)


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: [start, y_0, ..., y_{n-2}]; ignored labels (-100) become padding."""
    out = labels.new_full(labels.shape, decoder_start_token_id)
    out[..., 1:] = labels[..., :-1]
    return out.masked_fill(out == -100, pad_token_id)
