"""Progressive stacking: the deep model repeats the shallow stack (block i = shallow block i % L), keeps embeddings
and head, is an independent model that runs and trains, works for decoders and encoder-decoders, and refuses depths
that are not multiples of the shallow one."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.models.progressive import stack_layers

V = 40


def _bert(layers: int = 2, task: str = "masked-lm", **extra):
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=layers, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    return build_model("bert", cfg, task, **extra)


def _assert_same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_deep_layers_repeat_the_shallow_stack():
    shallow = _bert(2)
    deep = stack_layers(shallow, 6)
    assert deep.config.num_layers == 6 and len(deep.backbone.layers) == 6
    assert type(deep) is type(shallow)
    for i in range(6):  # layers 0..1, 2..3 and 4..5 are copies of shallow layers 0..1
        _assert_same_module(deep.backbone.layers[i], shallow.backbone.layers[i % 2])
    _assert_same_module(deep.backbone.embeddings, shallow.backbone.embeddings)
    _assert_same_module(deep.head, shallow.head)
    # copies, not shared storage: training the deep model leaves the shallow one alone
    with torch.no_grad():
        deep.backbone.layers[2].attn.qkv.weight.add_(1.0)
    assert not torch.equal(deep.backbone.layers[2].attn.qkv.weight, shallow.backbone.layers[0].attn.qkv.weight)
    assert not torch.equal(deep.backbone.layers[0].attn.qkv.weight, deep.backbone.layers[2].attn.qkv.weight)


def test_deep_model_runs_and_trains():
    deep = stack_layers(_bert(2), 4)
    ids = torch.randint(1, V, (4, 12), generator=torch.Generator().manual_seed(1))
    opt = build_optimizer(deep, OptimConfig(lr=3e-3))
    losses = []
    for _ in range(12):
        logits = deep(ids).logits  # (B, T, V)
        assert torch.isfinite(logits).all()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in deep.backbone.layers.parameters())  # every new block learns
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0]


def test_stacking_keeps_task_labels_dtype_and_mode():
    shallow = _bert(1, "sequence-classification", num_labels=3).to(torch.float64).eval()
    shallow.label_names = ["a", "b", "c"]
    deep = stack_layers(shallow, 3)
    assert deep.num_labels == 3 and deep.label_names == ["a", "b", "c"]
    assert next(deep.parameters()).dtype == torch.float64 and not deep.training
    ids = torch.randint(1, V, (2, 8), generator=torch.Generator().manual_seed(2))
    assert deep(ids).logits.shape == (2, 3)


def test_decoder_and_encoder_decoder_families():
    torch.manual_seed(0)
    gpt = build_model("gpt2", make_config("gpt2", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2,
                                                       max_position_embeddings=16)), "causal-lm")
    deep = stack_layers(gpt, 4)
    _assert_same_module(deep.backbone.layers[3], gpt.backbone.layers[1])
    ids = torch.randint(1, V, (2, 8), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(deep(ids).logits).all()
    bart = build_model("bart", make_config("bart", dict(vocab_size=V, hidden_size=32, num_layers=1,
                                                        num_decoder_layers=2, num_heads=2, intermediate_size=64,
                                                        max_position_embeddings=16)), "seq2seq-lm")
    deep = stack_layers(bart, 2)  # encoder 1 -> 2, decoder 2 -> 4 (the same factor)
    assert len(deep.backbone.encoder.layers) == 2 and len(deep.backbone.decoder.layers) == 4
    _assert_same_module(deep.backbone.encoder.layers[1], bart.backbone.encoder.layers[0])
    _assert_same_module(deep.backbone.decoder.layers[3], bart.backbone.decoder.layers[1])


def test_bad_targets_name_the_depth_to_use():
    shallow = _bert(2)
    with pytest.raises(ConfigError, match="not a multiple of the model's 2 layers; use 6 or 4"):
        stack_layers(shallow, 5)
    with pytest.raises(ConfigError, match="not a multiple of the model's 2 layers; use 4"):
        stack_layers(shallow, 3)
    for target in (2, 1, 0):
        with pytest.raises(ConfigError, match="larger than the model's 2 layers.*use 4"):
            stack_layers(shallow, target)
