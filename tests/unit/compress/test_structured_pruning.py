"""Structured pruning (ptmkit.compress.prune STRUCTURED): heads (Michel et al. 2019), feed-forward neurons, blocks.

Each method removes exactly the count its rounding rule states and the parameters of exactly those units; the pruned
model runs forward and backward; importance is the gradient of a head gate (checked against central finite
differences of the loss) and the unit forced to be least important is the one removed; removing units equals
zeroing their output weights; pruned models round-trip through save_model / load_model, and their zero-padded
export loads in transformers with the same logits; bad inputs are errors that name the fix.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ptmkit import adapt
from ptmkit.compress.prune import STRUCTURED, reports
from ptmkit.compress.prune.heads import HeadPruneConfig, head_importance
from ptmkit.compress.prune.ffn import FFNPruneConfig
from ptmkit.compress.prune.layers import LayerPruneConfig
from ptmkit.config import ConfigError
from ptmkit.models import build_model, init_model, load_model, make_config, save_model
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.io import PRUNED_KEY
from ptmkit.train.layer_drop import LayerDropConfig, apply_layer_drop
from tests.contracts.test_model_families import TINY
from tests.parity.hf_tiny import V, make_reference, randomise_norms_and_biases

HEADS, FFN, LAYERS = STRUCTURED["heads"], STRUCTURED["ffn"], STRUCTURED["layers"]
D = 16  # head dim: width 64 / 4 heads


def _bert(num_layers: int = 2):
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=V, hidden_size=64, num_layers=num_layers, num_heads=4,
                                   intermediate_size=128, max_position_embeddings=64, dropout=0.0,
                                   attention_dropout=0.0))
    return randomise_norms_and_biases(build_model("bert", cfg, "masked-lm")).eval()


def _llama():  # grouped-query attention: 4 query heads in 2 key/value groups of 2; SwiGLU feed-forward
    torch.manual_seed(0)
    cfg = make_config("llama", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                    intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=False))
    return randomise_norms_and_biases(build_model("llama", cfg, "causal-lm")).eval()


def _batches(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (2, 10), generator=g) for _ in range(n)]


def _loss(model, ids):
    """Masked-LM style for the encoder, next-token for the decoder: any loss(model, batch) will do."""
    logits = model(ids).logits
    if model.backbone.causal:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten())


def _logits(model, ids=None):
    with torch.no_grad():
        return model(_batches(1, seed=7)[0] if ids is None else ids).logits


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _runs_forward_and_backward(model):
    model.train()
    _loss(model, _batches(1)[0]).backward()
    model.eval()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def _zero_head_outputs(model, heads: dict[str, list[int]]):
    """Mask heads the plain way, without the pruning code: zero their columns of the attention output projection."""
    with torch.no_grad():
        for name, hs in heads.items():
            out = model.get_submodule(name).out.weight.view(64, -1, D)  # (hidden, H, D)
            out[:, hs] = 0


def _removed(kept: dict[str, list[int]], n: int) -> dict[str, list[int]]:
    return {name: [i for i in range(n) if i not in k] for name, k in kept.items()}


# ---- heads ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,removed", [(0.5, 4), (0.3, 2), (0.125, 1), (0.0, 0)])
def test_heads_remove_floor_fraction_and_exactly_their_parameters(fraction, removed):
    model = _bert()
    before = _params(model)
    HEADS.apply(model, HeadPruneConfig(fraction=fraction), _loss, _batches())
    rep = reports(model)[-1]
    assert (rep.total, rep.removed, rep.fraction) == (8, removed, removed / 8)  # ⌊0.3 · 8⌋ = 2: 0.25 reached
    assert sum(m.attn.h for m in model.backbone.layers) == 8 - removed
    # one head: D rows each of q, k, v (weights over 64 inputs, and biases) and D columns of out
    per_head = 3 * D * 64 + 3 * D + D * 64
    assert before - _params(model) == removed * per_head == rep.parameters_before - rep.parameters_after
    for block in model.backbone.layers:
        assert block.attn.qkv.weight.shape == (3 * block.attn.h * D, 64)
        assert block.attn.out.weight.shape == (64, block.attn.h * D)
    _runs_forward_and_backward(model)


def test_iterative_head_pruning_reaches_the_same_count_and_runs():
    model = _bert()
    HEADS.apply(model, HeadPruneConfig(fraction=0.5, steps=3), _loss, _batches())  # rounds of 1, 1, 2 heads
    assert reports(model)[-1].removed == 4 and sum(b.attn.h for b in model.backbone.layers) == 4
    _runs_forward_and_backward(model)


def test_head_forced_least_important_is_the_one_removed():
    model = _bert()
    _zero_head_outputs(model, {"backbone.layers.1.attn": [2]})  # it now changes nothing: importance exactly 0
    scores = head_importance(model, _loss, _batches())
    assert scores["backbone.layers.1.attn"][2] == 0 and all(s.min() > 0 for n, s in scores.items()
                                                              if n != "backbone.layers.1.attn")
    HEADS.apply(model, HeadPruneConfig(fraction=0.125), _loss, _batches())
    assert reports(model)[-1].kept == {"backbone.layers.0.attn": [0, 1, 2, 3], "backbone.layers.1.attn": [0, 1, 3]}


def test_head_importance_is_the_gate_gradient_by_finite_differences():
    """I_h = mean over batches of |dL/dξ_h|; ξ_h scales head h's output, i.e. its columns of the out projection,
    so a central difference in that scale, done on the weights directly, must give the same number."""
    model = _bert().double()
    batches = _batches(2)
    raw = head_importance(model, _loss, batches, normalize=False)
    eps = 1e-6
    for name in ("backbone.layers.0.attn", "backbone.layers.1.attn"):
        w = model.get_submodule(name).out.weight
        expected = torch.zeros(4, dtype=torch.float64)
        for h in range(4):
            cols = slice(h * D, (h + 1) * D)
            diffs = []
            for ids in batches:
                losses = []
                for scale in (1 + eps, 1 - eps):
                    saved = w.data[:, cols].clone()
                    w.data[:, cols] *= scale
                    with torch.no_grad():
                        losses.append(_loss(model, ids))
                    w.data[:, cols] = saved
                diffs.append(abs(float(losses[0] - losses[1])) / (2 * eps))
            expected[h] = sum(diffs) / len(diffs)  # the mean of absolute values, not the absolute of the mean
        assert_close(raw[name].double(), expected, rtol=1e-5, atol=1e-9)
    normalised = head_importance(model, _loss, batches)
    for name, s in raw.items():  # Michel's layer-wise l2 normalisation
        assert_close(normalised[name], s / s.norm(), rtol=1e-6, atol=0)


def test_removing_heads_equals_zeroing_their_outputs():
    model = _bert()
    masked = copy.deepcopy(model)
    HEADS.apply(model, HeadPruneConfig(fraction=0.5), _loss, _batches())
    _zero_head_outputs(masked, _removed(reports(model)[-1].kept, 4))
    assert_close(_logits(model), _logits(masked), atol=1e-6, rtol=0)


def test_gqa_removes_whole_key_value_groups_and_the_kv_cache_fits():
    model = _llama()
    masked = copy.deepcopy(model)
    before = _params(model)
    HEADS.apply(model, HeadPruneConfig(fraction=0.25), _loss, _batches())  # ⌊0.25 · 4 groups⌋ = 1 group = 2 heads
    rep = reports(model)[-1]
    assert (rep.total, rep.removed) == (8, 2)
    assert sorted((b.attn.h, b.attn.kv) for b in model.backbone.layers) == [(2, 1), (4, 2)]
    # one group: 2 query heads + its key and value head = 4 · D rows of qkv (no biases), 2 · D columns of out
    assert before - _params(model) == 4 * D * 64 + 2 * D * 64
    removed = _removed(rep.kept, 4)
    assert all(r in ([], [0, 1], [2, 3]) for r in removed.values())
    _zero_head_outputs(masked, removed)
    ids = _batches(1, seed=3)[0]
    full = _logits(model, ids)
    assert_close(full, _logits(masked, ids), atol=1e-6, rtol=0)
    # incremental decoding: layers now have different numbers of key/value heads in one cache
    cache = model.backbone.new_cache(2, 10, torch.float32, "cpu")
    with torch.no_grad():
        first = model(ids[:, :6], cache=cache).logits
        rest = model(ids[:, 6:], cache=cache).logits
    assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-4)
    _runs_forward_and_backward(model)


def test_gqa_keeps_the_rows_of_whole_groups_and_refuses_a_partial_group():
    """The fused qkv rows are grouped per key/value head, [q heads of group j; k_j; v_j] (D rows each): keeping heads
    2 and 3 keeps group 1, i.e. rows 4D..8D, and out columns 2D..4D, and equals zeroing heads 0 and 1."""
    model = _llama()
    masked = copy.deepcopy(model)
    attn = model.backbone.layers[0].attn
    qkv, out = attn.qkv.weight.detach().clone(), attn.out.weight.detach().clone()
    attn.keep_units([2, 3])
    assert torch.equal(attn.qkv.weight, qkv[4 * D:8 * D]) and torch.equal(attn.out.weight, out[:, 2 * D:4 * D])
    assert (attn.h, attn.kv, attn.kept_units, attn.dense_units) == (2, 1, [2, 3], 4)
    _zero_head_outputs(masked, {"backbone.layers.0.attn": [0, 1]})
    assert_close(_logits(model), _logits(masked), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="keeps whole groups only.*keep all 2 query heads"):
        model.backbone.layers[1].attn.keep_units([0, 2, 3])


# ---- feed-forward neurons -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("importance", ["magnitude", "gradient"])
def test_ffn_removes_floor_fraction_per_layer_and_exactly_their_parameters(family, importance):
    model = _bert() if family == "bert" else _llama()
    masked = copy.deepcopy(model)
    before, width = _params(model), (128 if family == "bert" else 96)
    FFN.apply(model, FFNPruneConfig(fraction=0.3, importance=importance), _loss, _batches())
    rep = reports(model)[-1]
    n = int(0.3 * width)  # 38 of 128, 28 of 96
    assert (rep.total, rep.removed) == (2 * width, 2 * n)
    assert [b.ffn.num_units for b in model.backbone.layers] == [width - n] * 2
    # a neuron: BERT an up row (64 weights + bias) and a down column (64); LLaMA a gate and an up row and a down column
    per_neuron = 64 + 1 + 64 if family == "bert" else 3 * 64
    assert before - _params(model) == 2 * n * per_neuron
    with torch.no_grad():  # removed neurons == their down columns zeroed
        for name, keep in rep.kept.items():
            masked.get_submodule(name).down.weight[:, [i for i in range(width) if i not in keep]] = 0
    assert_close(_logits(model), _logits(masked), atol=1e-6, rtol=0)
    _runs_forward_and_backward(model)


@pytest.mark.parametrize("importance", ["magnitude", "gradient"])
def test_ffn_neuron_forced_least_important_is_removed(importance):
    model = _llama()
    with torch.no_grad():
        ffn = model.backbone.layers[1].ffn
        ffn.down.weight[:, 5] = 0 if importance == "gradient" else ffn.down.weight[:, 5] * 1e-4
    FFN.apply(model, FFNPruneConfig(fraction=[0.0, 0.011], importance=importance), _loss, _batches())
    assert reports(model)[-1].kept["backbone.layers.1.ffn"] == [i for i in range(96) if i != 5]
    assert model.backbone.layers[0].ffn.num_units == 96  # its fraction was 0


# ---- layers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg,keep", [
    (LayerPruneConfig(layers=[0, 2]), [1, 3]),
    (LayerPruneConfig(strategy="every_other"), [0, 2]),
    (LayerPruneConfig(strategy="top", k=3), [0]),
])
def test_layer_removal_drops_exactly_the_named_blocks(cfg, keep):
    model = _bert(num_layers=4)
    blocks = list(model.backbone.layers)
    per_block = sum(p.numel() for p in blocks[0].parameters())
    before = _params(model)
    LAYERS.apply(model, cfg)
    assert [id(b) for b in model.backbone.layers] == [id(blocks[i]) for i in keep]
    assert model.config.num_layers == len(keep)
    rep = reports(model)[-1]
    assert (rep.total, rep.removed, rep.fraction) == (4, 4 - len(keep), (4 - len(keep)) / 4)
    assert before - _params(model) == (4 - len(keep)) * per_block
    _runs_forward_and_backward(model)


def test_layer_removal_of_a_layer_drop_trained_model():
    model = _bert(num_layers=4)
    apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.5))
    model.train()
    _loss(model, _batches(1)[0]).backward()  # a LayerDrop training step
    reference = copy.deepcopy(model).eval()
    LAYERS.apply(model, LayerPruneConfig(strategy="every_other"))
    # the pruned model is the reference with blocks 1 and 3 skipped
    with torch.no_grad():
        ids = _batches(1, seed=5)[0]
        x = reference.backbone.embeddings(ids, torch.arange(10)[None].expand(2, 10))
        for i in (0, 2):
            x = reference.backbone.layers[i](x)
        want = reference.head(x, reference.backbone.input_embeddings().weight)
    assert_close(_logits(model.eval(), ids), want, atol=1e-6, rtol=0)


# ---- save / load / transformers ----------------------------------------------------------------------------------


def _prune_all(model):
    HEADS.apply(model, HeadPruneConfig(fraction=0.25), _loss, _batches())
    n = len(model.backbone.layers)
    FFN.apply(model, FFNPruneConfig(fraction=[0.5] + [0.25] * (n - 1)), _loss, _batches())  # widths differ per layer
    return model


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_pruned_model_round_trips_through_its_directory(tmp_path, family):
    model = _prune_all(_bert(num_layers=3) if family == "bert" else _llama())
    if family == "bert":
        LAYERS.apply(model, LayerPruneConfig(layers=[1]))
    save_model(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config[PRUNED_KEY] == {n: {"keep": m.kept_units, "of": m.dense_units}
                                  for n, m in model.backbone.named_modules() if getattr(m, "kept_units", None)}
    back = load_model(tmp_path / "pruned").eval()
    shapes = lambda m: {n: p.shape for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(back) == shapes(model)
    assert torch.equal(_logits(back), _logits(model))
    assert _params(init_model(tmp_path / "pruned")) == _params(model)  # the shapes come from config.json alone
    # pruned twice: the record composes, indices stay those of the unpruned model
    HEADS.apply(back, HeadPruneConfig(fraction=0.2), _loss, _batches())
    save_model(back, tmp_path / "twice")
    again = load_model(tmp_path / "twice").eval()
    assert torch.equal(_logits(again), _logits(back))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_zero_padded_export_loads_in_transformers_with_the_same_logits(tmp_path, family):
    task = "masked-lm" if family == "bert" else "causal-lm"
    make_reference(family, task).save_pretrained(tmp_path / "hf")
    model = _prune_all(load_model(tmp_path / "hf").eval())
    LAYERS.apply(model, LayerPruneConfig(strategy="top", k=1))
    save_model(model, tmp_path / "pruned")
    cls = transformers.BertForMaskedLM if family == "bert" else transformers.LlamaForCausalLM
    hf = cls.from_pretrained(tmp_path / "pruned").eval()
    assert hf.config.num_hidden_layers == 1
    ids = _batches(1, seed=9)[0]
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    assert_close(_logits(model, ids), want, atol=1e-5, rtol=0)


def test_load_refuses_removed_units_that_are_no_longer_zero(tmp_path):
    model = _prune_all(_bert())
    save_model(model, tmp_path / "pruned")
    weights = load_file(tmp_path / "pruned" / "model.safetensors")
    gone = _removed(reports(model)[0].kept, 4)
    layer = next(n for n, r in gone.items() if r).split(".")[2]
    key = f"bert.encoder.layer.{layer}.attention.output.dense.weight"  # as if fine-tuned further in transformers
    weights[key] = weights[key] + 0.01
    save_file(weights, tmp_path / "pruned" / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"nonzero weights.*delete {PRUNED_KEY}"):
        load_model(tmp_path / "pruned")


# ---- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: HeadPruneConfig(fraction=1.0),
    lambda: HeadPruneConfig(fraction=-0.1),
    lambda: FFNPruneConfig(fraction=[0.2, 1.0]),
])
def test_fraction_outside_zero_one_is_refused(make):
    with pytest.raises(ConfigError, match=r"fraction must be in \[0, 1\)"):
        make()


def test_pruning_every_head_of_a_layer_is_refused_and_leaves_the_model_unchanged():
    model = _bert()
    _zero_head_outputs(model, {"backbone.layers.0.attn": [0, 1, 2, 3]})  # the four least important heads
    before = _logits(model)
    with pytest.raises(ConfigError, match="remove all 4 heads of backbone.layers.0.attn.*lower `fraction`"):
        HEADS.apply(model, HeadPruneConfig(fraction=0.5), _loss, _batches())
    assert [b.attn.h for b in model.backbone.layers] == [4, 4] and torch.equal(_logits(model), before)


@pytest.mark.parametrize("method,cfg", [
    ("heads", HeadPruneConfig(fraction=0.5, targets=["self_attention"])),
    ("ffn", FFNPruneConfig(fraction=0.5, targets=["layers.*.mlp"])),
])
def test_a_target_that_matches_nothing_is_refused(method, cfg):
    with pytest.raises(ConfigError, match="matches no .*set `targets`"):
        STRUCTURED[method].apply(_bert(), cfg, _loss, _batches())


@pytest.mark.parametrize("cfg,message", [
    (LayerPruneConfig(layers=[2]), "layer index 2 is out of range .* use indices 0 to 1"),
    (LayerPruneConfig(layers=[0, 1]), "remove all 2 blocks.*keep at least one"),
    (LayerPruneConfig(strategy="top", k=5), "remove all 2 blocks"),
])
def test_bad_layer_choices_are_refused(cfg, message):
    with pytest.raises(ConfigError, match=message):
        LAYERS.apply(_bert(), cfg)


@pytest.mark.parametrize("kwargs,message", [
    (dict(), "needs `layers`"),
    (dict(layers=[1, 1]), "repeats"),
    (dict(strategy="top"), "needs k >= 1"),
    (dict(strategy="every_other", layers=[1]), "leave it empty"),
])
def test_bad_layer_configs_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LayerPruneConfig(**kwargs)


def test_gradient_importance_without_a_loss_is_refused():
    with pytest.raises(ConfigError, match="needs `loss_fn"):
        FFN.apply(_bert(), FFNPruneConfig(fraction=0.5, importance="gradient"))
    with pytest.raises(ConfigError, match="needs `loss_fn"):
        HEADS.apply(_bert(), HeadPruneConfig(fraction=0.5))


def test_heads_of_a_model_with_a_shared_per_head_position_bias_are_refused():
    t5 = build_model("t5", make_config("t5", TINY["t5"][0]), "seq2seq-lm")
    with pytest.raises(ConfigError, match="relative position bias.*prune its feed-forward neurons or its layers"):
        HEADS.apply(t5, HeadPruneConfig(fraction=0.5), _loss, _batches())


def test_a_model_carrying_delta_modules_is_refused():
    model = _bert()
    adapt.apply(model, "lora")
    with pytest.raises(ConfigError, match="delta-tuning modules.*merge them"):
        HEADS.apply(model, HeadPruneConfig(fraction=0.5), _loss, _batches())
