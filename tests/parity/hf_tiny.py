"""Tiny random reference models in transformers, one per family and task (litgpt tests/test_model.py habit).

transformers initialises every norm to weight 1 / bias 0 and every linear bias to 0, so a converter that swapped two
LayerNorms, or dropped or misplaced a bias, would still match. `randomise_norms_and_biases` makes all of them random
(seeded); every parity test runs its reference models through it.
"""

from __future__ import annotations

import torch
import transformers as T
from torch import nn

V = 101


def hf_config(family: str):
    if family == "bert":
        return T.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    if family == "megatron-bert":  # pre-norm BERT with a final norm and no embedding norm
        return T.MegatronBertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)
    if family == "roberta":
        return T.RobertaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=66, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, pad_token_id=1)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                            eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if family == "llama":
        return T.LlamaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    if family == "llama-tied-mqa":
        return T.LlamaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=1, intermediate_size=96, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
                             rope_theta=500.0)
    if family == "llama-bias":  # biased q/k/v/o and MLP projections (attention_bias, mlp_bias: Qwen-style layouts)
        return T.LlamaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
                             attention_bias=True, mlp_bias=True)
    if family == "albert":  # factorised embedding (E=32 < H=64), one shared layer (num_hidden_groups=1)
        return T.AlbertConfig(vocab_size=V, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    raise KeyError(family)


HF_CLASSES = {
    ("bert", "base"): T.BertModel,
    ("bert", "masked-lm"): T.BertForMaskedLM,
    ("bert", "sequence-classification"): T.BertForSequenceClassification,
    ("bert", "token-classification"): T.BertForTokenClassification,
    ("megatron-bert", "base"): T.MegatronBertModel,
    ("megatron-bert", "masked-lm"): T.MegatronBertForMaskedLM,
    ("megatron-bert", "sequence-classification"): T.MegatronBertForSequenceClassification,
    ("megatron-bert", "token-classification"): T.MegatronBertForTokenClassification,
    ("roberta", "base"): T.RobertaModel,
    ("roberta", "masked-lm"): T.RobertaForMaskedLM,
    ("roberta", "sequence-classification"): T.RobertaForSequenceClassification,
    ("roberta", "token-classification"): T.RobertaForTokenClassification,
    ("gpt2", "base"): T.GPT2Model,
    ("gpt2", "causal-lm"): T.GPT2LMHeadModel,
    ("gpt2", "sequence-classification"): T.GPT2ForSequenceClassification,
    ("gpt2", "token-classification"): T.GPT2ForTokenClassification,
    ("llama", "base"): T.LlamaModel,
    ("llama", "causal-lm"): T.LlamaForCausalLM,
    ("llama-tied-mqa", "causal-lm"): T.LlamaForCausalLM,
    ("llama-bias", "causal-lm"): T.LlamaForCausalLM,
    ("llama", "sequence-classification"): T.LlamaForSequenceClassification,
    ("llama", "token-classification"): T.LlamaForTokenClassification,
    ("albert", "base"): T.AlbertModel,
    ("albert", "masked-lm"): T.AlbertForMaskedLM,
    ("albert", "sequence-classification"): T.AlbertForSequenceClassification,
    ("albert", "token-classification"): T.AlbertForTokenClassification,
}


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the families' own norms (T5LayerNorm, LlamaRMSNorm, MixtralRMSNorm, ...)."""
    return "norm" in type(module).__name__.lower()


def randomise_norms_and_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every norm weight ~ N(1, 0.2), every norm bias and every other parameter named `*bias` ~ N(0, 0.1) (linear
    biases, heads' output biases, XLNet's / Transformer-XL's r_*_bias, BART's final_logits_bias buffer), in place,
    from a generator seeded with `seed`. Works on transformers and ptmkit models alike; returns the model.
    Tied parameters are drawn once (named_parameters lists a shared tensor once), so ties survive."""
    g = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor, mean: float, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * std + mean)

    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if not _is_norm(module):
                continue
            for name, p in module.named_parameters(recurse=False):
                if id(p) not in done:
                    done.add(id(p))
                    draw(p, 1.0 if name == "weight" else 0.0, 0.2 if name == "weight" else 0.1)
        for name, p in model.named_parameters():
            if id(p) not in done and name.endswith("bias"):
                done.add(id(p))
                draw(p, 0.0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):  # BART/mBART keep this output bias as a buffer
                draw(b, 0.0, 0.1)
    return model


def make_reference(family: str, task: str):
    cfg = hf_config(family)
    if task in ("sequence-classification", "token-classification"):
        cfg.num_labels = 3
    model = HF_CLASSES[(family, task)](cfg).eval()
    return randomise_norms_and_biases(model)
