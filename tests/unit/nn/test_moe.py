"""Sparse Mixture-of-Experts FFN (ptmkit.nn.moe): routing, capacity and dropping, gates, auxiliary losses,
statistics, gradients, configuration errors, and MoE inside tiny BERT / GPT-2 / LLaMA trained by ptmkit's loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.testing import assert_close

from ptmkit.config import ConfigError, from_dict, to_dict
from ptmkit.models import build_model, make_config
from ptmkit.models.llama import LlamaConfig
from ptmkit.nn.moe import MoEConfig, SparseMoE, collect_moe, moe_layers
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.train.loop import TrainConfig, TrainingModule, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig


def _layer(h=8, f=16, gated=False, bias=True, **cfg) -> SparseMoE:
    torch.manual_seed(0)
    layer = SparseMoE(MoEConfig(**cfg), h, f, "silu" if gated else "gelu", bias=bias, gated=gated)
    if bias:  # non-zero biases, so a test notices one applied to the wrong expert
        with torch.no_grad():
            layer.b_in.normal_()
            layer.b_out.normal_()
    return layer


def _expert(layer: SparseMoE, i: int, x: torch.Tensor) -> torch.Tensor:
    """Expert i on tokens x (N, H), written out directly."""
    h = x @ layer.w_in[i]
    if layer.b_in is not None:
        h = h + layer.b_in[i]
    if layer.gated:
        h = layer.act(h[..., 0::2]) * h[..., 1::2]
    else:
        h = layer.act(h)
    y = h @ layer.w_out[i]
    return y + layer.b_out[i] if layer.b_out is not None else y


def _reference(layer: SparseMoE, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Token-by-token routing as the papers describe it: (output, number of dropped assignments)."""
    c = layer.cfg
    b, t, h = x.shape
    groups = x.reshape(b, t, h) if c.routing_groups == "sequence" else x.reshape(1, b * t, h)
    outs, dropped = [], 0
    for xs in groups:
        s = xs.shape[0]
        probs = F.linear(xs.float(), layer.router.weight.float()).softmax(-1)
        top_p, top_e = probs.topk(c.top_k, dim=-1)
        gates = top_p / top_p.sum(-1, keepdim=True) if c.renormalise else top_p
        cap = layer.capacity(s)
        filled = [0] * c.num_experts
        out = torch.zeros_like(xs)
        for k in range(c.top_k):  # GShard: every token's first choice before any second choice
            for i in range(s):
                e = int(top_e[i, k])
                if filled[e] < cap:
                    filled[e] += 1
                    out[i] += gates[i, k] * _expert(layer, e, xs[i:i + 1])[0]
                else:
                    dropped += 1
        outs.append(out)
    return torch.stack(outs).reshape(b, t, h), dropped


# ---- routing, capacity, dropping ------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k,groups,cf,gated", [
    (1, "batch", 1.0, False), (2, "batch", 1.0, False), (2, "sequence", 0.5, True), (3, "batch", 0.8, True),
    (1, "sequence", 1.25, False),
])
def test_vectorised_dispatch_matches_token_by_token_routing(top_k, groups, cf, gated):
    layer = _layer(num_experts=4, top_k=top_k, routing_groups=groups, capacity_factor=cf, gated=gated)
    x = torch.randn(3, 7, 8)
    out = layer(x)
    ref, dropped = _reference(layer, x)
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert layer.stats["dropped_fraction"].item() == pytest.approx(dropped / (x.shape[0] * x.shape[1] * top_k), rel=1e-6)


def test_capacity_drops_tokens_beyond_it_in_token_order():
    """Crafted router: every token prefers expert 0. With 8 tokens, 4 experts and capacity factor 1.0 each expert
    takes ceil(8 / 4) = 2 tokens: the first two are processed, the other six are dropped (output 0)."""
    layer = _layer(h=4, f=8, num_experts=4, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 5.0  # logit of expert 0 = 5 * sum(x) > 0 for positive x
    x = torch.rand(1, 8, 4) + 0.5
    out = layer(x)
    assert layer.capacity(8) == 2
    gate = F.linear(x[0], layer.router.weight).softmax(-1)[:, 0]
    assert_close(out[0, :2], gate[:2, None] * _expert(layer, 0, x[0, :2]))
    assert torch.count_nonzero(out[0, 2:]) == 0
    assert layer.stats["dropped_fraction"].item() == pytest.approx(6 / 8)
    assert_close(layer.stats["expert_fraction"], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_capacity_formula_and_eval_factor():
    layer = _layer(num_experts=8, top_k=2, capacity_factor=1.25, eval_capacity_factor=2.0)
    assert layer.capacity(640) == math.ceil(1.25 * 640 * 2 / 8) == 200  # Switch eq. 3, times k (GShard)
    layer.eval()
    assert layer.capacity(640) == 320
    assert _layer(num_experts=2, top_k=2, capacity_factor=2.0).capacity(3) == 3  # never more slots than tokens


def test_eval_capacity_factor_governs_dropping_in_eval_mode():
    layer = _layer(h=4, f=8, num_experts=4, capacity_factor=0.5, eval_capacity_factor=4.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[1] = 5.0
    x = torch.rand(2, 6, 4) + 0.5
    layer(x)
    assert layer.stats["dropped_fraction"].item() == pytest.approx(1 - 2 / 12)  # ceil(0.5 * 12 / 4) = 2 slots
    layer.eval()
    layer(x)
    assert layer.stats["dropped_fraction"].item() == 0.0  # 4.0 >= E / K: nothing is dropped


def test_sequence_groups_route_each_sequence_independently():
    layer = _layer(num_experts=4, top_k=1, routing_groups="sequence", capacity_factor=0.5)
    x = torch.randn(4, 9, 8)
    full = layer(x)
    for i in range(4):  # a sequence's output does not depend on its batch neighbours
        assert_close(layer(x[i:i + 1]), full[i:i + 1])


def test_top_k_gates_renormalised_or_raw():
    x = torch.randn(2, 5, 8)
    for normalize in (None, False):
        layer = _layer(num_experts=4, top_k=2, capacity_factor=2.0, normalize_gates=normalize)
        out = layer(x)
        probs = F.linear(x, layer.router.weight).softmax(-1)
        top_p, top_e = probs.topk(2, dim=-1)
        gates = top_p / top_p.sum(-1, keepdim=True) if normalize is None else top_p
        if normalize is None:
            assert_close(gates.sum(-1), torch.ones(2, 5))
        ref = sum(gates[..., k, None] * torch.stack([
            torch.stack([_expert(layer, int(top_e[b, t, k]), x[b, t:t + 1])[0] for t in range(5)]) for b in range(2)])
            for k in range(2))
        assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_top1_gate_is_the_raw_router_probability():
    layer = _layer(num_experts=4, capacity_factor=4.0)  # nothing dropped
    x = torch.randn(1, 6, 8)
    out = layer(x)
    p, e = F.linear(x[0], layer.router.weight).softmax(-1).max(-1)
    ref = torch.stack([p[i] * _expert(layer, int(e[i]), x[0, i:i + 1])[0] for i in range(6)])
    assert_close(out[0], ref, atol=1e-5, rtol=1e-5)


# ---- losses and statistics ------------------------------------------------------------------------------------------

def test_load_balancing_loss_is_one_when_uniform_and_grows_when_collapsed():
    e = 4
    layer = _layer(h=e, f=8, num_experts=e, capacity_factor=2.0)
    x = torch.eye(e).repeat(3, 1)[None]  # (1, 12, 4): token i is the unit vector e_(i mod 4)
    with torch.no_grad():
        layer.router.weight.copy_(3.0 * torch.eye(e))  # token i -> expert i mod 4; mean probabilities uniform
    layer(x)
    assert_close(layer.stats["expert_fraction"], torch.full((e,), 1 / e))
    assert layer.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 20.0  # every token -> expert 2 with probability ~1
    layer(x)
    assert layer.aux_loss.item() == pytest.approx(e, rel=1e-3)  # the maximum, E
    assert layer.stats["expert_fraction"][2].item() == 1.0


def test_load_balancing_loss_formula_on_random_routing():
    layer = _layer(num_experts=4, top_k=2)
    x = torch.randn(2, 10, 8)
    layer(x)
    probs = F.linear(x.reshape(20, 8), layer.router.weight).softmax(-1)
    chosen = F.one_hot(probs.topk(2, -1).indices, 4).sum(1).float()  # (N, E)
    f = chosen.sum(0) / chosen.sum()  # share of the assignments
    assert_close(layer.aux_loss, 4 * (f * probs.mean(0)).sum())


def test_z_loss_value():
    layer = _layer(num_experts=4)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        layer.router.weight.zero_()
    layer(x)
    assert layer.z_loss.item() == pytest.approx(math.log(4) ** 2)  # all logits 0: logsumexp = log E
    with torch.no_grad():
        layer.router.weight.normal_()
    layer(x)
    logits = F.linear(x, layer.router.weight)
    assert_close(layer.z_loss, torch.logsumexp(logits, -1).pow(2).mean())


def test_stats_sum_to_one_and_collect_reports_them():
    layers = (_layer(num_experts=4, top_k=2, capacity_factor=0.5), _layer(num_experts=4))
    x = torch.randn(2, 8, 8)
    for layer in layers:
        layer(x)
        assert layer.stats["expert_fraction"].sum().item() == pytest.approx(1.0)
        assert 0.0 <= layer.stats["dropped_fraction"].item() <= 1.0
    total, metrics = collect_moe(layers)
    assert_close(total, sum(0.01 * m.aux_loss + 0.001 * m.z_loss for m in layers))
    assert metrics["moe_dropped_fraction"] == pytest.approx(sum(m.stats["dropped_fraction"].item() for m in layers) / 2)
    assert metrics["moe_expert_fraction_min"] <= 0.25 <= metrics["moe_expert_fraction_max"]
    assert set(metrics) == {"moe_router_loss", "moe_aux_loss", "moe_z_loss", "moe_dropped_fraction",
                            "moe_expert_fraction_max", "moe_expert_fraction_min"}


def test_gradients_reach_router_and_every_used_expert():
    layer = _layer(num_experts=4, top_k=2, capacity_factor=2.0, gated=True)
    x = torch.randn(2, 16, 8, requires_grad=True)
    layer(x).pow(2).sum().backward()  # the task loss alone
    assert layer.router.weight.grad.abs().sum() > 0  # through the gates
    used = layer.stats["expert_fraction"] > 0
    for p in (layer.w_in, layer.w_out, layer.b_in, layer.b_out):
        per_expert = p.grad.flatten(1).abs().sum(1)
        assert (per_expert[used] > 0).all() and (per_expert[~used] == 0).all()
    assert x.grad.abs().sum() > 0
    layer.zero_grad()
    layer(x)
    layer.router_loss().backward()  # the auxiliary losses alone reach the router
    assert layer.router.weight.grad.abs().sum() > 0


def test_router_runs_in_float32_under_bf16_autocast():
    layer = _layer(num_experts=4, top_k=2)
    x = torch.randn(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        logits, _ = layer.route(x)
    assert logits.dtype == torch.float32 and layer.aux_loss.dtype == torch.float32
    assert out.dtype == x.dtype
    assert_close(out, layer(x), atol=5e-2, rtol=5e-2)


def test_router_jitter_only_in_training():
    layer = _layer(num_experts=4, router_jitter=0.5)
    x = torch.randn(2, 32, 8)
    layer.eval()
    assert_close(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    assert not torch.allclose(a, layer(x))


# ---- configuration --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,message", [
    ({"num_experts": 1}, "num_experts must be >= 2"),
    ({"num_experts": 4, "top_k": 5}, "top_k 5 selects more experts than exist"),
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
    ({"eval_capacity_factor": -1.0}, "eval_capacity_factor must be > 0"),
    ({"aux_loss_coef": -0.1}, "aux_loss_coef must be >= 0"),
    ({"z_loss_coef": -1e-3}, "z_loss_coef must be >= 0"),
    ({"router_jitter": 1.0}, "router_jitter must be in"),
    ({"routing_groups": "tokens"}, "routing_groups must be one of"),
    ({"every": 0}, "every must be >= 1"),
    ({"top_k": 1, "normalize_gates": True}, "never reaches the router"),
])
def test_bad_config_is_a_clear_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        MoEConfig(**fields)


def test_model_configs_read_moe_from_dicts_yaml_and_json():
    text = """
    vocab_size: 64
    hidden_size: 32
    num_layers: 4
    num_heads: 2
    intermediate_size: 64
    moe: {num_experts: 4, top_k: 2, every: 1, capacity_factor: 1.5}
    """
    cfg = from_dict(LlamaConfig, yaml.safe_load(text))
    assert isinstance(cfg.moe, MoEConfig) and cfg.moe.capacity_factor == 1.5 and cfg.moe.every == 1
    again = from_dict(LlamaConfig, json.loads(json.dumps(to_dict(cfg))))  # run_config.json round trip
    assert again == cfg
    assert LlamaConfig(num_layers=2, moe={"num_experts": 2}).moe == MoEConfig(num_experts=2)  # direct kwargs too
    assert make_config("gpt2", {"num_layers": 2}).moe is None  # dense by default
    with pytest.raises(ConfigError, match=r"BertConfig\.moe: unknown key\(s\) \['experts'\]; valid keys are"):
        make_config("bert", {"num_layers": 2, "moe": {"experts": 4}})
    with pytest.raises(ConfigError, match="selects more experts than exist"):
        make_config("gpt2", {"num_layers": 2, "moe": {"num_experts": 2, "top_k": 3}})
    with pytest.raises(ConfigError, match="leaves no sparse layer"):
        make_config("bert", {"num_layers": 2, "moe": {"every": 3}})


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_every_selects_the_sparse_blocks(family):
    cfg = make_config(family, dict(vocab_size=64, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=48,
                                   moe={"num_experts": 4, "every": 2}))
    model = build_model(family, cfg, "base")
    kinds = [isinstance(b.ffn, SparseMoE) for b in model.layers]
    assert kinds == [False, True, False, True]  # Switch: every other layer (HF sparse_step 2: layers 1, 3)
    moe = model.layers[1].ffn
    assert moe.gated == (family == "llama") and moe.w_out.shape == (4, 48, 32)


def test_llama_moe_cached_decoding_matches_full_forward_when_eval_is_dropless():
    cfg = make_config("llama", dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                                    moe={"num_experts": 4, "top_k": 2, "every": 1, "eval_capacity_factor": 2.0}))
    model = build_model("llama", cfg, "causal-lm").eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.backbone.new_cache(2, 9, torch.float32, "cpu")
        steps = [model(ids[:, :5], cache=cache).logits]
        steps += [model(ids[:, i:i + 1], cache=cache).logits for i in range(5, 9)]
    assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


# ---- training integration -------------------------------------------------------------------------------------------

V = 64


class RepeatedWordBatches:
    """The contract tests' learnable language: each sequence repeats one random word. Resumable."""

    def __init__(self, objective, batch=16, length=16):
        self.objective, self.batch, self.length, self.i = objective, batch, length, 0

    def __next__(self):
        g = torch.Generator().manual_seed(self.i)
        ids = torch.randint(4, V, (self.batch, 1), generator=g).expand(self.batch, self.length).contiguous()
        b = self.objective.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                   seeded_generator(0, self.i))
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def _objective(name):
    cfg_cls, obj_cls = OBJECTIVES[name]
    params = {"mask_token_id": 3, "vocab_size": V, "special_token_ids": [0, 1, 2, 3]} if name == "mlm" else {}
    return obj_cls(from_dict(cfg_cls, params))


def _tiny(family, moe):
    extra = {"max_position_embeddings": 32, "dropout": 0.0, "attention_dropout": 0.0} if family != "llama" else {}
    if family == "gpt2":
        extra["embedding_dropout"] = 0.0
    cfg = make_config(family, dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                   moe=moe, **extra))
    return build_model(family, cfg, "masked-lm" if family == "bert" else "causal-lm")


@pytest.mark.parametrize("family,objective", [("bert", "mlm"), ("gpt2", "clm"), ("llama", "clm")])
def test_moe_model_trains_through_the_loop_and_logs_router_metrics(tmp_path, family, objective):
    torch.manual_seed(0)
    obj = _objective(objective)
    model = _tiny(family, {"num_experts": 4, "top_k": 2 if family == "llama" else 1, "every": 1})
    run = tmp_path / family
    train(model, obj, RepeatedWordBatches(obj), run,
          TrainConfig(steps=100, precision="fp32", log_every=10, checkpoint_every=0, progress_bar=False),
          OptimConfig(lr=2e-3), ScheduleConfig(decay="constant"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") == "train"]
    first, last = train_records[0], train_records[-1]
    assert last["loss"] < 0.5 * first["loss"], [r["loss"] for r in train_records]
    for key in ("moe_aux_loss", "moe_z_loss", "moe_router_loss", "moe_dropped_fraction", "moe_expert_fraction_max",
                "moe_expert_fraction_min"):
        assert all(key in r for r in train_records), key
    assert 0.9 <= last["moe_aux_loss"] <= 4.0  # ~1 balanced ... E = 4 collapsed
    assert 0.0 <= last["moe_dropped_fraction"] <= 1.0


def test_training_module_adds_router_losses_in_training_only():
    torch.manual_seed(0)
    obj = _objective("clm")
    module = TrainingModule(_tiny("gpt2", {"num_experts": 4, "every": 1}), obj)
    batch = next(RepeatedWordBatches(obj))
    plain, _ = obj.loss(module.model, batch)
    loss, metrics = module(batch)
    router = sum(m.router_loss() for m in moe_layers(module))
    assert len(moe_layers(module)) == 2
    assert_close(loss, plain + router)
    assert metrics["loss"] == pytest.approx(plain.item(), rel=1e-6)  # the objective's loss, comparable with dense
    assert metrics["moe_router_loss"] == pytest.approx(router.item(), rel=1e-6)
    module.eval()
    loss, metrics = module(batch)
    assert_close(loss, obj.loss(module.model, batch)[0])  # evaluation scores the task alone
    assert "moe_aux_loss" in metrics


def test_layer_skipped_this_step_reports_nothing():
    obj = _objective("clm")
    module = TrainingModule(_tiny("gpt2", {"num_experts": 4, "every": 1}), obj)
    batch = next(RepeatedWordBatches(obj))
    module(batch)[0].backward()
    skipped = module.model.backbone.layers[1]
    skipped.forward = lambda x, *args, **kwargs: x  # as LayerDrop skips a block
    loss, metrics = module(batch)
    assert moe_layers(module)[1].aux_loss is None
    loss.backward()  # no stale graph from the previous step


def test_dense_model_is_unaffected():
    torch.manual_seed(0)
    obj = _objective("clm")
    model = _tiny("gpt2", None)
    module = TrainingModule(model, obj)
    assert moe_layers(module) == ()
    batch = next(RepeatedWordBatches(obj))
    loss, metrics = module(batch)
    plain, plain_metrics = obj.loss(model, batch)
    assert_close(loss, plain)
    assert metrics.keys() == plain_metrics.keys()
