"""Layer-wise learning-rate decay: group lrs follow lr·decay^(L - i) per block, decay^(L + 1) for embeddings and 1 for
the head; depth counts per stack; the no-decay split and the fused AdamW path stay; the schedule keeps the ratios."""

from __future__ import annotations

import pytest
import torch

from ptmkit.recipes.finetune import FinetuneConfig
from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config
from ptmkit.train.optim import OptimConfig, build_optimizer, param_groups
from ptmkit.train.schedule import ScheduleConfig, build_scheduler


def _bert(layers: int = 3):
    cfg = make_config("bert", dict(vocab_size=40, hidden_size=32, num_layers=layers, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16))
    return build_model("bert", cfg, "masked-lm")


def _lr_by_name(model, groups) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


def _expected_bert_scale(name: str, decay: float, layers: int) -> float:
    if name.startswith("backbone.embeddings."):
        return decay ** (layers + 1)
    if name.startswith("backbone.layers."):
        return decay ** (layers - int(name.split(".")[2]))
    assert name.startswith("head."), name
    return 1.0


def test_group_lrs_follow_the_formula_for_a_3_layer_bert():
    model = _bert(3)
    cfg = OptimConfig(lr=2e-3, layer_decay=0.5)
    groups = param_groups(model, cfg)
    lrs = _lr_by_name(model, groups)
    assert set(lrs) == {n for n, _ in model.named_parameters()}  # every parameter, once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, lr in lrs.items():
        assert lr == pytest.approx(2e-3 * _expected_bert_scale(name, 0.5, 3)), name
    # e.g. the embeddings learn at lr·0.5⁴, block 0 at lr·0.5³, the top block at lr·0.5, the MLM head at lr
    assert lrs["backbone.embeddings.tok.weight"] == pytest.approx(2e-3 / 16)
    assert lrs["backbone.layers.0.attn.qkv.weight"] == pytest.approx(2e-3 / 8)
    assert lrs["backbone.layers.2.ffn.down.weight"] == pytest.approx(2e-3 / 2)
    assert lrs["head.dense.weight"] == pytest.approx(2e-3)
    for g in groups:
        assert g["lr"] == pytest.approx(cfg.lr * g["lr_scale"])


def test_no_decay_split_is_kept_inside_each_layer():
    model = _bert(3)
    groups = param_groups(model, OptimConfig(layer_decay=0.8, weight_decay=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        exempt = [names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in g["params"]]
        assert all(exempt) or not any(exempt)  # a group is all-decayed or all-exempt
        assert g["weight_decay"] == (0.0 if exempt[0] else 0.05)
    # 5 depths (embeddings, 3 blocks, head) x {decayed, exempt}; the largest lr first, for the loop's lr log
    assert len(groups) == 10
    scales = [g["lr_scale"] for g in groups]
    assert scales == sorted(scales, reverse=True) and scales[0] == 1.0


def test_layer_decay_one_changes_nothing():
    model = _bert(2)
    decay, no_decay = param_groups(model, OptimConfig(lr=3e-4))
    assert decay["lr"] == no_decay["lr"] == 3e-4 and decay["lr_scale"] == no_decay["lr_scale"] == 1.0
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_fused_adamw_and_the_schedule_keep_per_group_lrs():
    model = _bert(3)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.5))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    initial = [g["lr"] for g in opt.param_groups]
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4, decay="linear"), total_steps=10)
    # LambdaLR multiplies each group's own initial lr by the same factor
    for step in range(8):
        factor = (step + 1) / 4 if step < 4 else 1 - (step - 4) / 6
        for g, lr0 in zip(opt.param_groups, initial):
            assert g["lr"] == pytest.approx(lr0 * factor), (step, g["lr_scale"])
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()


def test_depth_counts_per_stack_in_an_encoder_decoder():
    cfg = make_config("bart", dict(vocab_size=40, hidden_size=32, num_layers=2, num_decoder_layers=3, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    model = build_model("bart", cfg, "seq2seq-lm")
    lrs = _lr_by_name(model, param_groups(model, OptimConfig(lr=1.0, layer_decay=0.5)))
    assert lrs["backbone.encoder.layers.0.attn.qkv.weight"] == pytest.approx(0.5 ** 2)
    assert lrs["backbone.encoder.layers.1.attn.qkv.weight"] == pytest.approx(0.5)
    assert lrs["backbone.decoder.layers.0.attn.qkv.weight"] == pytest.approx(0.5 ** 3)
    assert lrs["backbone.decoder.layers.2.attn.qkv.weight"] == pytest.approx(0.5)
    # shared tables and the embedding norms sit below the deepest stack
    for name in ("backbone.shared.weight", "backbone.encoder.positions.weight", "backbone.decoder.embed_norm.weight"):
        assert lrs[name] == pytest.approx(0.5 ** 4), name


def test_lamb_groups_get_the_scaled_lrs_too():
    model = _bert(3)
    opt = build_optimizer(model, OptimConfig(name="lamb", lr=1e-2, layer_decay=0.5))
    assert {g["lr_scale"] for g in opt.param_groups} == {1.0, 0.5, 0.25, 0.125, 0.0625}
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-2 * g["lr_scale"])


def test_finetuning_uses_layer_decay():
    model = build_model("bert", _bert(2).config, "sequence-classification", num_labels=2)
    opt = build_optimizer(model, OptimConfig(lr=1e-4, layer_decay=0.5))  # what finetune() builds
    lrs = _lr_by_name(model, opt.param_groups)
    assert lrs["backbone.layers.1.attn.qkv.weight"] == pytest.approx(5e-5)
    assert lrs["backbone.embeddings.tok.weight"] == pytest.approx(1e-4 / 8)
    head = [n for n in lrs if not n.startswith("backbone.")]
    assert head and all(lrs[n] == pytest.approx(1e-4) for n in head)
    with pytest.raises(ConfigError, match="layer_decay must be in"):
        FinetuneConfig(model="m", task="sst2", out="o", layer_decay=1.2)


def test_bad_settings_say_what_to_change():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"layer_decay must be in \(0, 1\]"):
            OptimConfig(layer_decay=bad)
    with pytest.raises(ConfigError, match=r"unknown name 'sgd'; choose one of \['adamw', 'lamb'\]"):
        from_dict(OptimConfig, {"name": "sgd"})
    no_stack = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="needs a model with a `layers` block stack.*set optim.layer_decay to 1.0"):
        param_groups(no_stack, OptimConfig(layer_decay=0.9))
    assert len(param_groups(no_stack, OptimConfig())) == 2  # without layer decay any model still works
