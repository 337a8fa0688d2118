"""Generation: cached equals uncached, batching with left padding, sampling filters, stop tokens."""

from __future__ import annotations

import pytest
import torch

from ptmkit.models import build_model, make_config
from ptmkit.models.generate import filter_logits

TINY = {
    "gpt2": dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=64, dropout=0.0,
                 attention_dropout=0.0, embedding_dropout=0.0),
    "llama": dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96),
}


def _model(family):
    torch.manual_seed(1)
    model = build_model(family, make_config(family, TINY[family]), "causal-lm").eval()
    # scale up the output so greedy choices are not near-ties between the two code paths
    with torch.no_grad():
        model.backbone.embeddings.tok.weight.mul_(20)
    return model


@pytest.mark.parametrize("family", sorted(TINY))
def test_cached_greedy_equals_uncached(family):
    model = _model(family)
    prompt = torch.randint(0, 97, (3, 5))
    a = model.generate(prompt, max_new_tokens=15, use_cache=True)
    b = model.generate(prompt, max_new_tokens=15, use_cache=False)
    assert a.shape == (3, 20)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("family", sorted(TINY))
def test_cached_sampling_equals_uncached_with_same_seed(family):
    model = _model(family)
    prompt = torch.randint(0, 97, (2, 4))
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9)
    a = model.generate(prompt, use_cache=True, generator=torch.Generator().manual_seed(5), **kw)
    b = model.generate(prompt, use_cache=False, generator=torch.Generator().manual_seed(5), **kw)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("family", sorted(TINY))
def test_left_padded_batch_equals_single_prompts(family):
    model = _model(family)
    p1, p2 = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 3))
    batch = torch.cat([p1, torch.cat([torch.zeros(1, 3, dtype=torch.long), p2], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=8)
    assert out[0].tolist() == model.generate(p1, max_new_tokens=8)[0].tolist()
    assert out[1, 3:].tolist() == model.generate(p2, max_new_tokens=8)[0].tolist()


def test_stop_tokens_end_rows_and_pad_after():
    model = _model("gpt2")
    prompt = torch.randint(0, 97, (2, 4))
    free = model.generate(prompt, max_new_tokens=10)
    stop = int(free[0, 6])  # the 3rd generated token of row 0
    out = model.generate(prompt, max_new_tokens=10, stop_tokens=[stop], pad_token_id=96)
    row = out[0, 4:].tolist()
    first = row.index(stop)
    assert all(t == 96 for t in row[first + 1 :])
    assert out[0, : 4 + first + 1].tolist() == free[0, : 4 + first + 1].tolist()


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5+0.25 reaches it -> keep two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits, top_p=1.0)).any()


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(filter_logits(logits[None], top_k=2).softmax(-1).expand(20000, 3), 1, generator=g)
    freq = torch.bincount(draws[:, 0], minlength=3).float() / 20000
    assert freq[2] == 0
    assert abs(freq[0] - 0.7 / 0.9) < 0.02


@pytest.mark.parametrize("kw,msg", [
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(max_new_tokens=100), "positions"),
])
def test_bad_generation_arguments(kw, msg):
    model = _model("gpt2")
    with pytest.raises(ValueError, match=msg):
        model.generate(torch.zeros(1, 3, dtype=torch.long), **kw)
