"""Parity of ptmkit.nn.moe.SparseMoE with transformers' routed layers.

* SwitchTransformersSparseMLP (Fedus et al. 2021): top-1, raw gate p_i, per-sequence expert capacity with token
  dropping, load_balancing_loss_func and router_z_loss_func. ptmkit reproduces it with routing_groups="sequence"
  and the capacity factor that gives HF's fixed expert_capacity (C = ceil(cf * T / E)).
* MixtralSparseMoeBlock: top-2 over SwiGLU experts with renormalised gates and no capacity limit (ptmkit: a capacity
  factor >= E / k drops nothing). Mixtral's load_balancing_loss_func counts each token k times (its expert shares sum
  to k), so it equals k times ptmkit's aux_loss, whose shares sum to 1 (1.0 = balanced for any k).

Documented differences (not bugs on either side): HF Switch sets capacity as a fixed token count per sequence, ptmkit
as a factor, by default over all tokens of the batch (routing_groups="batch", Switch eq. 3); HF's z-loss and
load-balancing loss are computed over all sparse layers at once, ptmkit's per layer (TrainingModule sums them).
"""

from __future__ import annotations

import pytest
import torch
import transformers
import transformers.models.mixtral.modeling_mixtral as mixtral
import transformers.models.switch_transformers.modeling_switch_transformers as switch
from torch.testing import assert_close

from ptmkit.nn.moe import MoEConfig, SparseMoE

H, F, E = 16, 32, 4


def _switch_pair(capacity: int, seq_len: int, groups: str = "sequence", scale: float = 1.0):
    """A random ptmkit Switch layer and HF's SwitchTransformersSparseMLP holding the same weights."""
    torch.manual_seed(0)
    ours = SparseMoE(MoEConfig(num_experts=E, top_k=1, capacity_factor=capacity * E / seq_len,
                               routing_groups=groups), H, F, "relu", bias=False)
    with torch.no_grad():
        ours.router.weight.mul_(scale)  # larger logits: more confident, less balanced routing
    cfg = transformers.SwitchTransformersConfig(d_model=H, d_ff=F, num_experts=E, expert_capacity=capacity,
                                                router_jitter_noise=0.0, dropout_rate=0.0, dense_act_fn="relu",
                                                router_bias=False)
    ref = switch.SwitchTransformersSparseMLP(cfg).eval()
    ours.train()  # the training capacity factor; HF's expert_capacity is the same in train and eval
    with torch.no_grad():
        ref.router.classifier.weight.copy_(ours.router.weight)  # (E, H)
        for i in range(E):
            ref.experts[f"expert_{i}"].wi.weight.copy_(ours.w_in[i].T)  # (F, H) = (H, F)^T
            ref.experts[f"expert_{i}"].wo.weight.copy_(ours.w_out[i].T)  # (H, F) = (F, H)^T
    assert ours.capacity(seq_len) == capacity
    return ours, ref


def _hf_losses(ref, x):
    _, _, logits = ref.router(x)  # (B, T, E) raw router logits, float32
    z = switch.router_z_loss_func(logits)
    aux = switch.load_balancing_loss_func(torch.softmax(logits, -1), logits.argmax(-1))
    return aux, z


@pytest.mark.parametrize("capacity", [2, 3, 12], ids=["tight", "some-drops", "no-drops"])
def test_switch_layer_matches_hf_including_dropped_tokens(capacity):
    ours, ref = _switch_pair(capacity, seq_len=12, scale=4.0)
    x = torch.randn(3, 12, H)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    dropped_rows = (expected.abs().sum(-1) == 0)  # HF writes 0 for a token over capacity (v5 semantics)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)  # every token, the dropped ones (0 on both sides) included
    assert torch.equal(got.abs().sum(-1) == 0, dropped_rows)  # the same tokens dropped
    assert ours.stats["dropped_fraction"].item() == pytest.approx(dropped_rows.float().mean().item(), rel=1e-6)
    if capacity < 12:
        assert dropped_rows.any(), "the test must exercise dropping"
    else:
        assert not dropped_rows.any()
    aux, z = _hf_losses(ref, x)
    assert_close(ours.aux_loss, aux)
    assert_close(ours.z_loss, z)


def test_batch_routing_groups_match_hf_for_one_sequence():
    """routing_groups="batch" pools capacity over the batch; for a single sequence that is HF's per-sequence rule."""
    ours, ref = _switch_pair(capacity=3, seq_len=10, groups="batch", scale=4.0)
    x = torch.randn(1, 10, H)
    with torch.no_grad():
        assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    aux, z = _hf_losses(ref, x)
    assert_close(ours.aux_loss, aux)
    assert_close(ours.z_loss, z)


def test_batch_routing_groups_differ_from_hf_only_through_capacity():
    """With several sequences and room for every token, both groupings compute the same outputs as HF."""
    ours, ref = _switch_pair(capacity=8, seq_len=8, groups="batch")
    x = torch.randn(4, 8, H)
    with torch.no_grad():
        assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_switch_gradients_match_hf():
    ours, ref = _switch_pair(capacity=3, seq_len=12, scale=2.0)
    x = torch.randn(2, 12, H)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert_close(ours.router.weight.grad, ref.router.classifier.weight.grad, atol=1e-5, rtol=1e-4)
    for i in range(E):
        assert_close(ours.w_in.grad[i].T, ref.experts[f"expert_{i}"].wi.weight.grad, atol=1e-5, rtol=1e-4)
        assert_close(ours.w_out.grad[i].T, ref.experts[f"expert_{i}"].wo.weight.grad, atol=1e-5, rtol=1e-4)


def test_mixtral_top2_swiglu_matches_hf():
    torch.manual_seed(0)
    ours = SparseMoE(MoEConfig(num_experts=E, top_k=2, capacity_factor=E / 2, eval_capacity_factor=E / 2, every=1),
                     H, F, "silu", bias=False, gated=True)
    cfg = transformers.MixtralConfig(hidden_size=H, intermediate_size=F, num_local_experts=E, num_experts_per_tok=2,
                                     router_jitter_noise=0.0, hidden_act="silu")
    ref = mixtral.MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        ref.gate.weight.copy_(ours.router.weight)
        gate, up = ours.w_in[..., 0::2], ours.w_in[..., 1::2]  # (E, H, F) each: ptmkit interleaves gate_f, up_f
        ref.experts.gate_up_proj.copy_(torch.cat([gate, up], dim=-1).transpose(1, 2))  # (E, 2F, H): [gate; up]
        ref.experts.down_proj.copy_(ours.w_out.transpose(1, 2))  # (E, H, F)
    x = torch.randn(3, 7, H)
    with torch.no_grad():
        got = ours(x)
        expected = ref(x)
    assert ours.stats["dropped_fraction"].item() == 0.0
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    logits = torch.nn.functional.linear(x.reshape(-1, H), ours.router.weight)
    hf_aux = mixtral.load_balancing_loss_func((logits,), num_experts=E, top_k=2)
    assert_close(2 * ours.aux_loss, hf_aux)  # HF's expert shares sum to k, ptmkit's to 1
