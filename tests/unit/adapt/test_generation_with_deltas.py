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


@pytest.mark.parametrize("method", sorted(m for m in adapt.METHODS if m not in CLASSIFIER_METHODS))
def test_activation_checkpointing_gives_the_same_gradients(method):
    """Recomputing each block in the backward pass runs the deltas' hooks again: same loss, same gradients."""
    import copy

    from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing

    from ptmkit.models import build_model, make_config
    from tests.contracts.test_model_families import TINY

    torch.manual_seed(0)
    no_dropout = dict(TINY["gpt2"][0], dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    model = build_model("gpt2", make_config("gpt2", no_dropout), "causal-lm")
    adapt.apply(model, method, {"dropout": 0.0} if method == "feature" else None)
    for m in model.modules():  # the methods' own dropout too: both runs must compute the same thing
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    _perturb(model)
    adapt.freeze_except(model)
    model.train()  # checkpointing only recomputes in training mode
    twin = copy.deepcopy(model)
    assert apply_activation_checkpointing(twin) > 0
    ids = torch.randint(6, 101, (2, 9), generator=torch.Generator().manual_seed(1))
    calls = []
    twin.backbone.layers[0].attn.register_forward_hook(lambda *a: calls.append(1))
    for m in (model, twin):
        m(ids).logits.float().pow(2).mean().backward()
    assert len(calls) == 2, "the block was not recomputed in the backward pass"
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    twin_grads = {n: p.grad for n, p in twin.named_parameters() if p.requires_grad}
    assert grads.keys() == twin_grads.keys() and grads
    for n, g in grads.items():
        torch.testing.assert_close(twin_grads[n], g, atol=1e-6, rtol=1e-5)
