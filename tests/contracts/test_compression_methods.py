"""Every post-training compression method of `ptm compress` (recipes.compress.KINDS), applied to a tiny BERT
classifier and a tiny LLaMA classifier: it reaches exactly what it states (units removed, zero weights, bit widths,
tied layers), the compressed model still runs (and, unless its weights are integers, trains), and it saves and loads
back with the same logits. A method added to a registry is tested here the moment it is added."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.compress.quant import QUANTIZERS, load_quantized, save_quantized
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.objectives.classification import TaskObjective
from ptmkit.recipes.compress import KINDS, apply_method

ONE_SHOT = sorted(m for m, k in KINDS.items() if k in ("structured", "unstructured", "quant", "share"))
OPTIONS = {"heads": {"fraction": 0.5}, "ffn": {"fraction": 0.5}, "layers": {"layers": [1]},
           "magnitude": {"sparsity": 0.5}, "share": {"num_groups": 1}, "qbert": {"batches": 1, "samples": 2}}
FAMILIES = {
    "bert": dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                 max_position_embeddings=32),
    "llama": dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                  max_position_embeddings=32),
}


def _model(family):
    torch.manual_seed(0)
    return build_model(family, make_config(family, FAMILIES[family]), "sequence-classification", num_labels=2).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (4, 10), generator=g)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (4,), generator=g)}]


def _params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ONE_SHOT)
def test_every_method_reaches_what_it_states_runs_and_round_trips(method, family, tmp_path):
    model = _model(family)
    before = _params(model)
    batches = _batches()
    objective = TaskObjective()
    model, details = apply_method(model, method, OPTIONS.get(method, {}), batches, lambda m, b: objective.loss(m, b)[0])
    kind = KINDS[method]
    if kind == "structured":
        r = details["pruning"][-1]
        fraction = OPTIONS[method].get("fraction")
        if fraction is not None:
            assert r["removed"] == math.floor(fraction * r["total"])
        assert _params(model) < before
    elif kind == "unstructured":
        sp = details["sparsity"]
        assert sp["zeros"] == round(OPTIONS[method]["sparsity"] * sp["size"])
    elif kind == "quant":
        bits = details["quantisation"]["weight_bits"]
        stated = QUANTIZERS[method].weight_bits
        assert bits and (stated is None or set(bits.values()) == {stated})
    else:
        assert details["shared_groups"] == [[0, 1]] and _params(model) < before
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    if kind != "quant":  # float weights: the compressed model fine-tunes on
        model.train()
        objective.loss(model, batches[0])[0].backward()
        assert any(p.grad is not None for p in model.parameters())
        model.eval()
        save_model(model, tmp_path / "m")
        back = load_model(tmp_path / "m").eval()
    else:
        save_quantized(model, tmp_path / "m")
        back = load_quantized(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, logits, atol=1e-6)
    assert _params(back) == _params(model)
