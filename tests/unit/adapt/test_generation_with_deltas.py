"""Every delta method works with the KV cache during generation: greedy decoding with the cache gives the same
tokens as re-running the whole sequence without it, on left-padded batches, for a decoder with learned positions
(GPT-2) and one with rotary positions and grouped-query attention (LLaMA)."""

from __future__ import annotations

import pytest
import torch

from ptmkit import adapt
from tests.contracts.test_delta_methods import CLASSIFIER_METHODS, REFUSED, _perturb
from tests.contracts.test_model_families import _build

CASES = [(m, f) for m in sorted(adapt.METHODS) for f in ("gpt2", "llama")
         if (m, f) not in REFUSED and m not in CLASSIFIER_METHODS]  # a classifier generates nothing


@pytest.mark.parametrize("method,family", CASES)
def test_cached_generation_equals_uncached(method, family):
    torch.manual_seed(0)
    model = _build(family).eval()
    adapt.apply(model, method)
    _perturb(model)
    ids = torch.randint(6, 101, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=6, use_cache=True)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, uncached)
    logits = model(ids, attention_mask=mask).logits
    with adapt.disabled(model):  # the method is active on this path (greedy tokens of a tiny model may not show it)
        assert (model(ids, attention_mask=mask).logits - logits).abs().max() > 1e-4
