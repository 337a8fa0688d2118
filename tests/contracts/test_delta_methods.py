"""Contract: every registered delta-tuning method (ptmkit.adapt.METHODS) on every model family at tiny size.

For each method x a representative family of each kind of block (FAMILIES): a fresh method is the base model (every method's documented zero/identity init); only the
method's parameters can train and each of them gets a gradient; switched off (`disabled`) it is the base model again
even after its parameters changed; merged equals unmerged for mergeable methods, and unmerging restores the base
weights; a few optimiser steps on the delta parameters alone lower the loss; and the bad inputs the issue lists are
errors. Pairs where a method does not apply are listed in REFUSED with the reason, and the test asserts the refusal.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from ptmkit import adapt
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from tests.contracts.test_model_families import TINY, _build, _inputs

# (method, family) -> a fragment of the error that refuses it
REFUSED: dict[tuple[str, str], str] = {
    ("bitfit", "llama"): "nothing to train",
    ("bitfit", "t5"): "nothing to train",
    ("bitfit", "t5-encoder"): "nothing to train",
    ("lora", "transfo-xl"): "reads the weight of .*qkv directly",  # LoRA's default targets are q and v
    ("ia3", "transfo-xl"): "reads the weight of .*qkv directly",
    # relative attention of their own (two-stream / memory): no SelfAttention to give keys and values to
    ("prefix", "xlnet"): "has no SelfAttention modules",
    ("prefix", "transfo-xl"): "has no SelfAttention modules",
    ("ptuning-v2", "xlnet"): "has no SelfAttention modules",
    ("ptuning-v2", "transfo-xl"): "has no SelfAttention modules",
    **{(m, f): "does not take a soft prompt" for m in ("prompt", "ptuning")
       for f in ("t5", "bart", "mbart", "xlnet", "transfo-xl")},
    **{("feature", f): "encoder-decoder|sequence-classification" for f in ("t5", "bart", "mbart")},
}
# A representative of each kind of block: the families left out share their blocks with one listed (roberta and
# megatron-bert with bert, mbart with bart, t5-encoder with t5), and test_model_families covers them as models.
FAMILIES = ["albert", "bart", "bert", "electra", "gpt2", "llama", "t5", "transfo-xl", "xlnet"]
CLASSIFIER_METHODS = ("feature",)
# training runs a few optimizer steps: one family of each kind (encoder, decoder with learned and with rotary
# positions, encoder-decoder) keeps the suite's time in bounds; the checks above run on every family
TRAIN_FAMILIES = ("bert", "gpt2", "llama", "t5")
CASES = [(m, f) for m in sorted(adapt.METHODS) for f in FAMILIES if (m, f) not in REFUSED]
TOL = dict(atol=1e-5, rtol=1e-4)


def _setup(method: str, family: str):
    torch.manual_seed(0)
    if method in CLASSIFIER_METHODS:  # trains a classifier on the features: a sequence-classification model
        overrides = TINY[family][0]
        model = build_model(family, make_config(family, overrides), "sequence-classification", num_labels=3).eval()
        torch.manual_seed(1)
        ids = torch.randint(6, 101, (2, 10))
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        return model, ([ids, mask], {}, {})
    model = _build(family).eval()
    torch.manual_seed(1)
    inputs = _inputs(family, padded=True)
    return model, inputs


def _run(model, inputs) -> torch.Tensor:
    """Every output tensor of the model, flattened into one vector (a head used only by one output counts)."""
    args, kw, _ = inputs
    out = model(*args, **kw)
    fields = [getattr(out, f) for f in vars(out)]
    return torch.cat([t.float().flatten() for t in fields if torch.is_tensor(t) and t.is_floating_point()])


def _perturb(model, seed: int = 3) -> None:
    """Give every delta parameter a random value, so the method changes the output (zero-init hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapt.delta_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _applied(method: str, family: str):
    model, inputs = _setup(method, family)
    base_out = _run(model, inputs).detach()
    adapt.apply(model, method)
    return model, inputs, base_out


@pytest.mark.parametrize("method,family", sorted(REFUSED))
def test_a_method_refuses_a_family_it_does_not_apply_to(method, family):
    """Each documented refusal is an error that says why (a model with no classifier, no bias, no self-attention
    module, a weight read directly, no soft-prompt input)."""
    with pytest.raises(ConfigError, match=REFUSED[(method, family)]):
        model, _ = _setup(method, family)
        adapt.apply(model, method)


@pytest.mark.parametrize("method,family", CASES)
def test_fresh_method_is_the_base_model_and_disabled_stays_base(method, family):
    model, inputs, base_out = _applied(method, family)
    assert adapt.delta_parameters(model), "the method added no parameters"
    if adapt.METHODS[method].identity_at_init:
        assert_close(_run(model, inputs), base_out, **TOL)
    _perturb(model)
    changed = _run(model, inputs)
    assert (changed - base_out).abs().max() > 1e-4, "perturbed delta parameters do not change the output"
    with adapt.disabled(model):
        assert_close(_run(model, inputs), base_out, **TOL)
    assert_close(_run(model, inputs), changed, **TOL)  # switched back on


@pytest.mark.parametrize("method,family", CASES)
def test_only_delta_parameters_train(method, family):
    model, inputs, _ = _applied(method, family)
    _perturb(model)  # non-zero up/B matrices: every delta parameter then gets a gradient
    adapt.freeze_except(model)
    deltas = adapt.delta_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(deltas)
    model.train()
    _run(model, inputs).float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        if n in deltas:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient: its hook does not run"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    counts = adapt.count_parameters(model)
    assert counts["trainable"] == sum(p.numel() for p in deltas.values()) and counts["trainable_pct"] < 100


@pytest.mark.parametrize("method,family", CASES)
def test_merged_equals_unmerged(method, family):
    model, inputs, base_out = _applied(method, family)
    _perturb(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = _run(model, inputs).detach()
    if not adapt.METHODS[method].mergeable:
        with pytest.raises(ConfigError, match="cannot be merged"):
            adapt.merge(model)
        return
    adapt.merge(model)
    assert_close(_run(model, inputs), unmerged, **TOL)
    with adapt.disabled(model):  # merged into the weights: switching the hooks off changes nothing
        assert_close(_run(model, inputs), unmerged, **TOL)
    adapt.unmerge(model)
    assert_close(_run(model, inputs), unmerged, **TOL)
    for n, p in model.named_parameters():
        assert_close(p, before[n], atol=1e-5, rtol=1e-5, msg=lambda m: f"{n} not restored by unmerge: {m}")


@pytest.mark.parametrize("method,family", [(m, f) for m, f in CASES if f in TRAIN_FAMILIES])
def test_a_few_steps_lower_the_loss(method, family):
    model, inputs, _ = _applied(method, family)
    _perturb(model, seed=4)
    target = _run(model, inputs).detach()  # reachable: the output of other delta values
    _perturb(model, seed=3)
    adapt.freeze_except(model)  # dropout stays off (eval mode): the loss is deterministic
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss = (_run(model, inputs).float() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("method", sorted(adapt.METHODS))
def test_applying_a_method_twice_is_an_error(method):
    model = _setup(method, "bert")[0]
    adapt.apply(model, method)
    with pytest.raises(ConfigError, match="already applied"):
        adapt.apply(model, method)


@pytest.mark.parametrize("method", sorted(m for m in adapt.METHODS if "targets" in adapt.METHODS[m].config.__dataclass_fields__))
def test_a_target_that_matches_nothing_is_an_error(method):
    with pytest.raises(ConfigError, match="matches no .*module names end in"):
        options = {"targets": ["no_such_module"]} | ({"feedforward": []} if method == "ia3" else {})
        adapt.apply(_build("bert"), method, options)


def test_remove_gives_back_the_base_model_and_its_names():
    model = _build("gpt2").eval()
    inputs = _inputs("gpt2", padded=True)
    names = [n for n, _ in model.named_parameters()]
    base_out = _run(model, inputs).detach()
    adapt.apply(model, "lora", {"targets": ["q", "v", "ffn.up"]})
    adapt.apply(model, "houlsby")
    _perturb(model)
    adapt.remove(model, "lora")
    adapt.remove(model, "houlsby")
    assert [n for n, _ in model.named_parameters()] == names
    assert_close(_run(model, inputs), base_out, **TOL)
    with pytest.raises(ConfigError, match="not applied"):
        adapt.remove(model, "lora")


def test_a_deep_copy_runs_its_own_delta_parameters():
    model = _build("bert").eval()
    adapt.apply(model, "lora")
    inputs = _inputs("bert", padded=True)
    twin = copy.deepcopy(model)
    _perturb(twin)
    assert (_run(twin, inputs) - _run(model, inputs)).abs().max() > 1e-4


def test_lora_on_parts_of_a_fused_projection_touches_only_those_rows():
    model = _build("llama").eval()
    adapt.apply(model, "lora", {"targets": ["q", "gate"], "rank": 2})
    _perturb(model)
    attn = model.backbone.layers[0].attn
    w0 = attn.qkv.weight.detach().clone()
    adapt.merge(model)
    changed = (attn.qkv.weight - w0).abs().sum(-1) > 0  # (rows,)
    q_rows = attn.fused_parts()["qkv"]["q"]
    assert changed[q_rows].all() and changed.sum() == len(q_rows)


def test_overlapping_targets_are_an_error():
    with pytest.raises(ConfigError, match="both whole and by part"):
        adapt.apply(_build("bert"), "lora", {"targets": ["qkv", "q"]})


def test_ia3_feedforward_must_be_a_target():
    with pytest.raises(ConfigError, match="must also be in targets"):
        adapt.apply(_build("bert"), "ia3", {"targets": ["k", "v"], "feedforward": ["down"]})


def test_unknown_method_and_option_are_errors():
    with pytest.raises(ConfigError, match="unknown delta-tuning method"):
        adapt.apply(_build("bert"), "lorra")
    with pytest.raises(ConfigError, match="rnk"):
        adapt.apply(_build("bert"), "lora", {"rnk": 4})
