"""Encoder-decoder families (t5, t5-encoder, bart, mbart): configs, masking, caches, generation, save/load."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.models import build_model, load_model, make_config, save_model, shift_right
from ptmkit.models.t5 import sentinel_ids

V = 61
TINY = {
    "t5": dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout=0.0),
    "t5-gated": dict(vocab_size=V, hidden_size=32, num_layers=2, num_decoder_layers=3, num_heads=4, head_dim=6,
                     intermediate_size=48, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout=0.0,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "bart": dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, num_decoder_heads=2, intermediate_size=64,
                 max_position_embeddings=32, dropout=0.0),
    "mbart": dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=32, dropout=0.0, decoder_start_token_id=2),
}
FAMILY = {"t5": "t5", "t5-gated": "t5", "bart": "bart", "mbart": "mbart"}


def tiny(name: str, task: str = "seq2seq-lm", **kw):
    return build_model(FAMILY[name], make_config(FAMILY[name], {**TINY[name], **kw}), task).eval()


def _src(b=2, s=9, pad=0):
    ids = torch.randint(3, V, (b, s))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("family,kw,msg", [
    ("t5", dict(hidden_size=30, num_heads=4), "not divisible"),
    ("t5", dict(num_layers=0), "must be positive"),
    ("t5", dict(num_decoder_layers=-1), "must be positive"),
    ("t5", dict(relative_attention_num_buckets=1), ">= 2"),
    ("t5", dict(relative_attention_num_buckets=3), ">= 4"),
    ("t5", dict(relative_attention_max_distance=2), "must exceed"),
    ("t5", dict(feed_forward_proj="gated-gelu-x"), "feed_forward_proj"),
    ("t5", dict(feed_forward_proj="gated-swoosh"), "unknown activation"),
    ("t5", dict(dropout=1.0), "dropout"),
    ("bart", dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
    ("bart", dict(num_decoder_heads=5), "not divisible by num_decoder_heads"),
    ("bart", dict(vocab_size=0), "must be positive"),
    ("bart", dict(max_position_embeddings=0), "must be positive"),
    ("bart", dict(hidden_act="nope"), "unknown hidden_act"),
    ("mbart", dict(intermediate_size=0), "must be positive"),
    ("mbart", dict(attention_dropout=1.5), "attention_dropout"),
])
def test_invalid_configs_fail_at_construction(family, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        make_config(family, {**TINY[family], **kw})


def test_t5_head_dim_may_differ_from_hidden_over_heads():
    cfg = make_config("t5", {**TINY["t5"], "hidden_size": 30, "head_dim": 8})
    model = build_model("t5", cfg, "seq2seq-lm")
    assert model.backbone.decoder.layers[0].attn.qkv.weight.shape == (3 * 4 * 8, 30)


def test_tasks_are_checked():
    with pytest.raises(ConfigError, match="encoder-decoder"):
        build_model("t5", make_config("t5", TINY["t5"]), "masked-lm")
    with pytest.raises(ConfigError, match="seq2seq-lm needs an encoder-decoder"):
        build_model("gpt2", make_config("gpt2", dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=4)),
                    "seq2seq-lm")


@pytest.mark.parametrize("name", sorted(TINY))
def test_decoder_never_sees_the_future_and_source_padding_is_ignored(name):
    model = tiny(name)
    pad = 1 if name in ("bart", "mbart") else 0
    ids, mask = _src(pad=pad)
    dec = torch.randint(3, V, (2, 8))
    out = model(ids, mask, dec).logits
    dec2 = dec.clone()
    dec2[:, 5:] = torch.randint(3, V, (2, 3))
    assert_close(model(ids, mask, dec2).logits[:, :5], out[:, :5])
    ids2 = ids.clone()
    ids2[1, 6:] = torch.randint(3, V, (3,))
    assert_close(model(ids2, mask, dec).logits[1], out[1])
    assert not torch.allclose(model(ids2, None, dec).logits[1], out[1])  # ... unless the mask says otherwise


@pytest.mark.parametrize("name", sorted(TINY))
def test_incremental_decoding_equals_full_pass(name):
    model = tiny(name)
    ids, mask = _src()
    dec = torch.randint(3, V, (2, 7))
    full = model(ids, mask, dec, output_hidden_states=True)
    cache = model.backbone.new_cache(2, 7, torch.float32, "cpu")
    memory = model.backbone.encode(ids, mask).last_hidden_state
    first = model(attention_mask=mask, decoder_input_ids=dec[:, :4], encoder_outputs=memory, cache=cache)
    steps = [first.logits] + [
        model(attention_mask=mask, decoder_input_ids=dec[:, i:i + 1], encoder_outputs=memory, cache=cache).logits
        for i in range(4, 7)
    ]
    assert_close(torch.cat(steps, 1), full.logits, atol=1e-5, rtol=1e-4)
    assert cache.length == 7 and len(cache.cross.kv) == len(model.backbone.decoder.layers)
    assert len(full.decoder_hidden_states) == len(model.backbone.decoder.layers) + 1


@pytest.mark.parametrize("name", sorted(TINY))
def test_generation_cached_equals_uncached_and_encoder_runs_once(name):
    model = tiny(name)
    ids, mask = _src()
    calls = []
    hook = model.backbone.encoder.register_forward_hook(lambda *a: calls.append(1))
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=9)
    assert len(calls) == 1
    hook.remove()
    assert greedy.shape == (2, 10)
    assert greedy[:, 0].tolist() == [model.config.decoder_start_token_id] * 2
    assert model.generate(ids, attention_mask=mask, max_new_tokens=9, use_cache=False).tolist() == greedy.tolist()
    sample = dict(temperature=0.8, top_k=10, top_p=0.9, max_new_tokens=9)
    a = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(3), **sample)
    b = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(3), use_cache=False, **sample)
    assert a.tolist() == b.tolist()


def test_stop_tokens_fill_with_padding():
    model = tiny("t5-gated")
    ids, mask = _src()
    free = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    stop = int(free[0, 3])  # a token row 0 emits at step 3
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, stop_tokens=[stop], pad_token_id=59)
    row = out[0].tolist()
    first = row.index(stop, 1)
    assert all(t == 59 for t in row[first + 1:])
    assert row[:first + 1] == free[0, :first + 1].tolist()


def test_generation_arguments_are_checked():
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        tiny("mbart", decoder_start_token_id=None).generate(torch.randint(3, V, (1, 4)), max_new_tokens=2)
    with pytest.raises(ValueError, match="positions"):
        tiny("bart").generate(torch.randint(3, V, (1, 4)), max_new_tokens=40)
    with pytest.raises(ValueError, match="temperature"):
        tiny("t5").generate(torch.randint(3, V, (1, 4)), temperature=-1.0)
    forced = tiny("mbart").generate(torch.randint(3, V, (1, 4)), max_new_tokens=3,
                                    decoder_input_ids=torch.tensor([[2, 7]]))
    assert forced.shape == (1, 5) and forced[0, :2].tolist() == [2, 7]


def test_t5_output_scale_only_when_tied():
    tied, untied = tiny("t5"), tiny("t5", tie_word_embeddings=False)
    assert tied.tied and not untied.tied
    assert tied.backbone.output_scale() == 32 ** -0.5 and untied.backbone.output_scale() == 1.0
    ids, mask = _src()
    dec = torch.randint(3, V, (2, 3))
    out = tied(ids, mask, dec)
    assert_close(out.logits, (out.last_hidden_state * 32 ** -0.5) @ tied.backbone.shared.weight.T)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    ids, mask = _src()
    labels = torch.randint(3, V, (2, 6))
    dec = shift_right(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
    logits = model(ids, mask, dec).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("name,task", [("t5", "seq2seq-lm"), ("t5-gated", "seq2seq-lm"), ("t5", "base"),
                                       ("bart", "seq2seq-lm"), ("mbart", "seq2seq-lm"), ("bart", "base")])
def test_save_load_round_trip(tmp_path, name, task):
    model = tiny(name, task)
    if task == "seq2seq-lm" and model.backbone.lm_bias:
        model.final_logits_bias.normal_()
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m").eval()
    assert type(back) is type(model) and back.config == model.config
    ids, mask = _src()
    dec = torch.randint(3, V, (2, 4))
    main = "logits" if task == "seq2seq-lm" else "last_hidden_state"
    assert_close(getattr(back(ids, mask, dec), main), getattr(model(ids, mask, dec), main))


def test_t5_encoder_family_with_a_classifier(tmp_path):
    cfg = make_config("t5-encoder", TINY["t5"])
    clf = build_model("t5-encoder", cfg, "sequence-classification", num_labels=3).eval()
    ids, mask = _src()
    assert clf(ids, mask).logits.shape == (2, 3)
    enc = build_model("t5-encoder", cfg).eval()
    save_model(enc, tmp_path / "e")
    back = load_model(tmp_path / "e")
    assert back.family == "t5-encoder"
    assert_close(back(ids, mask).last_hidden_state, enc(ids, mask).last_hidden_state)
    with pytest.raises(ValueError, match="token_type_ids"):
        enc(ids, mask, token_type_ids=torch.zeros_like(ids))


def test_shift_right_and_sentinels():
    labels = torch.tensor([[5, 6, -100, -100]])
    assert shift_right(labels, 0, 0).tolist() == [[0, 5, 6, 0]]
    assert sentinel_ids(3, 32100) == [32099, 32098, 32097]
    with pytest.raises(ValueError):
        sentinel_ids(0, 100)


def test_bart_positions_are_offset_by_two():
    model = tiny("bart", "base")
    pos = model.encoder.positions
    assert pos.num_embeddings == 32 + 2 and model.encoder.max_positions == 32
    x = torch.zeros(1, 3, 32)
    with torch.no_grad():
        pos.weight.zero_()
        pos.weight[2] = 1.0  # position 0 reads row 2
        model.encoder.embed_norm = None
        assert_close(model.encoder._embed(x, 0)[0, 0], torch.ones(32))
        assert_close(model.encoder._embed(x, 0)[0, 1], torch.zeros(32))
