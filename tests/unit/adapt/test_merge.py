"""Merging several methods that share a module composes as their hooks do in the forward pass."""

from __future__ import annotations

import pytest
from torch.testing import assert_close

from ptmkit import adapt
from tests.contracts.test_delta_methods import _perturb
from tests.contracts.test_model_families import _build, _inputs


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("first,second", [("lora", "ia3"), ("ia3", "lora"), ("bitfit", "ia3")])
def test_merging_two_methods_on_one_module_follows_the_forward_pass(first, second):
    """LoRA on q, v and IA3 on k, v share the fused qkv (and LoRA on down meets IA3's feed-forward input scaling):
    merged equals unmerged in either order, unmerge restores the weights, and removing one keeps the other."""
    model = _build("gpt2").eval()
    args, kw, _ = _inputs("gpt2", padded=True)
    options = {"lora": {"targets": ["q", "v", "down"]}, "ia3": None, "bitfit": None}
    before = _weights(model)
    adapt.apply(model, first, options[first])
    adapt.apply(model, second, options[second])
    _perturb(model)
    out = model(*args, **kw).logits
    adapt.merge(model)
    assert_close(model(*args, **kw).logits, out, atol=1e-5, rtol=1e-4)
    adapt.unmerge(model)
    for n, w in before.items():
        assert_close(dict(model.named_parameters())[n], w, atol=1e-6, rtol=1e-5)
    adapt.merge(model)
    adapt.remove(model, first)  # the other stays merged, and right
    assert first not in adapt.base.applied(model) and second in adapt.base.applied(model)
    adapt.unmerge(model)
    for n, w in before.items():
        assert_close(dict(model.named_parameters())[n], w, atol=1e-6, rtol=1e-5)
