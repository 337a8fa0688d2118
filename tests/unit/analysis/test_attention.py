"""Attention recording: rows sum to 1, the probabilities are transformers' own (output_attentions) for BERT and
LLaMA, recording changes no output and leaves no hook behind; head statistics on hand-made attention."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from ptmkit.analysis.attention import TokenClasses, head_statistics, record_attention
from ptmkit.config import ConfigError
from ptmkit.models import build_model, load_model, make_config
from tests.parity.hf_tiny import hf_config, randomise_norms_and_biases


@pytest.mark.parametrize("family,cls", [("bert", T.BertModel), ("llama", T.LlamaModel)])
def test_recorded_probabilities_are_the_models_own(family, cls, tmp_path):
    torch.manual_seed(0)
    hf = cls._from_config(hf_config(family), attn_implementation="eager").eval()  # eager: it returns the attentions
    randomise_norms_and_biases(hf)
    hf.save_pretrained(tmp_path / family)
    ours = load_model(tmp_path / family).eval()
    ids = torch.randint(5, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        plain = ours(ids, attention_mask=mask)
        with record_attention(ours) as att:
            recorded = ours(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    out = lambda o: o.last_hidden_state  # noqa: E731
    assert torch.equal(out(plain), out(recorded))  # recording changes nothing the model computes
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in ours.modules())  # and leaves nothing behind
    assert att.layers == len(theirs)
    real = mask.bool()[:, None, :, None]
    for layer in range(att.layers):
        p = att.probs(layer)
        rows = p.sum(-1)
        assert torch.allclose(rows[mask.bool()[:, None, :].expand_as(rows)], torch.ones(()), atol=1e-5)
        torch.testing.assert_close(p * real, theirs[layer].float() * real, atol=2e-5, rtol=1e-4)


def test_head_statistics_on_hand_made_attention():
    t = 4
    ids = torch.tensor([[1, 10, 7, 2]])  # [CLS] word , [SEP]
    classes = TokenClasses({1}, {2}, {7})
    eye = torch.eye(t)  # head 0 attends to itself
    prev = torch.roll(torch.eye(t), -1, dims=1)  # head 1 attends to the previous token (row 0: to the last)
    uniform = torch.full((t, t), 1 / t)  # head 2 spreads evenly
    probs = torch.stack([eye, prev, uniform])[None]  # (1, 3, T, T)
    s = head_statistics(probs, ids, None, classes)
    assert torch.allclose(s["self"], torch.tensor([1.0, 0.0, 0.25]))
    assert torch.allclose(s["previous"], torch.tensor([0.0, 0.75, 0.25 * 3 / 4]))
    assert torch.allclose(s["entropy"], torch.tensor([0.0, 0.0, torch.log(torch.tensor(4.0)).item()]), atol=1e-6)
    assert torch.allclose(s["to_cls"], torch.tensor([0.25, 0.25, 0.25]))
    assert torch.allclose(s["to_sep"], torch.tensor([0.25, 0.25, 0.25]))
    assert torch.allclose(s["mean_distance"][0], torch.tensor(0.0))
    assert torch.allclose(s["mean_distance"][1], torch.tensor((3 + 1 + 1 + 1) / 4))


def test_recording_refuses_what_it_cannot_record():
    xlnet = build_model("xlnet", make_config("xlnet", dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2,
                                                           intermediate_size=64)))
    with pytest.raises(ConfigError, match="XLNet"):
        record_attention(xlnet)
    lin = build_model("bert", make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2,
                                                       intermediate_size=64, max_position_embeddings=32,
                                                       attention_kernel="linformer",
                                                       attention_options={"max_len": 32, "proj_len": 8})))
    with pytest.raises(ConfigError, match="dense kernel"):
        record_attention(lin)
    bert = build_model("bert", make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2,
                                                        intermediate_size=64, max_position_embeddings=32)))
    with record_attention(bert) as att:
        pass
    with pytest.raises(ConfigError, match="nothing recorded"):
        att.probs(0)


def test_encoder_decoder_self_attention_is_t5s_own(tmp_path):
    """T5: the relative position bias travels in the kernel's additive mask; encoder layers first, then decoder."""
    from tests.parity.test_seq2seq_parity import hf_config as seq2seq_config

    torch.manual_seed(0)
    hf = T.T5ForConditionalGeneration._from_config(seq2seq_config("t5"), attn_implementation="eager").eval()
    randomise_norms_and_biases(hf)
    hf.save_pretrained(tmp_path / "t5")
    ours = load_model(tmp_path / "t5").eval()
    src = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with record_attention(ours) as att:
            ours(src, decoder_input_ids=tgt)
        theirs = hf(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    expected = list(theirs.encoder_attentions) + list(theirs.decoder_attentions)
    assert att.layers == len(expected)
    for layer, want in enumerate(expected):
        torch.testing.assert_close(att.probs(layer), want.float(), atol=2e-5, rtol=1e-4)
