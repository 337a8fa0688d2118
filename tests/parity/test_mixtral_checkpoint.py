"""Mixtral checkpoints <-> ptmkit LLaMA + Mixture-of-Experts (models/convert/mixtral.py).

A tiny random transformers Mixtral (2 layers, width 64, 4 experts, top-2) loads into ptmkit with the same logits; a
ptmkit LLaMA with a SparseMoE in every layer saves as a Mixtral directory that transformers loads with the same logits
and ptmkit loads back tensor for tensor; settings that Mixtral cannot express are refused or warned about.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from torch.testing import assert_close

from ptmkit.models import load_model, save_model
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.convert.mixtral import MixtralAdapter
from ptmkit.models.io import from_hf, hf_state_dict, read_weights
from ptmkit.models.llama import LlamaConfig
from ptmkit.models.registry import backbone_of, build_model, make_config
from ptmkit.nn.moe import MoEConfig, SparseMoE
from tests.parity.hf_tiny import randomise_norms_and_biases

V, E, K, LAYERS = 101, 4, 2, 2
DROPLESS = {"num_experts": E, "top_k": K, "every": 1, "capacity_factor": E / K, "eval_capacity_factor": E / K,
            "z_loss_coef": 0.0}
HF_CLASSES = {
    "base": transformers.MixtralModel,
    "causal-lm": transformers.MixtralForCausalLM,
    "sequence-classification": transformers.MixtralForSequenceClassification,
    "token-classification": transformers.MixtralForTokenClassification,
}
MIXTRAL_LOG = "ptmkit.models.convert.mixtral"


def _hf_reference(task: str = "causal-lm", **overrides):
    """A tiny random transformers Mixtral with random RMSNorm weights; routers scaled up so each token clearly prefers
    its top-2 experts."""
    cfg = transformers.MixtralConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=K, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, router_jitter_noise=0.0, **overrides,
    )
    if task in ("sequence-classification", "token-classification"):
        cfg.num_labels = 3
    model = randomise_norms_and_biases(HF_CLASSES[task](cfg).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.mul_(10.0)
    return model


def _ours(task: str = "causal-lm", moe=None, **overrides):
    """A ptmkit LLaMA with a SparseMoE in every layer (dropless unless `moe` says otherwise), random norms/biases."""
    cfg = make_config("llama", dict(vocab_size=V, hidden_size=64, num_layers=LAYERS, num_heads=4, num_kv_heads=2,
                                    intermediate_size=128, max_position_embeddings=64, pad_token_id=0,
                                    moe=dict(DROPLESS if moe is None else moe), **overrides))
    model = build_model("llama", cfg, task, num_labels=3 if "classification" in task else None).eval()
    randomise_norms_and_biases(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SparseMoE):
                m.router.weight.mul_(10.0)  # decisive routing, as in _hf_reference
    return model


def _ids():
    return torch.randint(3, V, (3, 10))  # no pad token (0): HF's classifier finds the last token by pad id


def _main(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# ---- transformers -> ptmkit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(HF_CLASSES))
def test_saved_mixtral_loads_with_identical_outputs(tmp_path, task):
    ref = _hf_reference(task)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    backbone = backbone_of(ours)
    assert backbone.family == "llama"  # a Mixtral is a LLaMA whose every feed-forward is sparse
    assert all(isinstance(layer.ffn, SparseMoE) for layer in backbone.layers)
    moe = backbone.config.moe
    assert (moe.num_experts, moe.top_k, moe.every, moe.renormalise, moe.z_loss_coef) == (E, K, 1, True, 0.0)
    assert moe.capacity_factor == moe.eval_capacity_factor == E / K  # Mixtral never drops a token
    ids = _ids()
    with torch.no_grad():
        want, got = _main(ref(input_ids=ids)), _main(ours(ids))
    assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert ours.load_report["checkpoint_task"] == task


def _padded(side: str):
    """_ids() with padding (token 0) on one side: row 0 full, rows 1 and 2 padded by 3 and 6 tokens."""
    ids = _ids()
    mask = torch.ones_like(ids)
    if side == "right":
        mask[1, 7:] = 0
        mask[2, 4:] = 0
    else:
        mask[1, :3] = 0
        mask[2, :6] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("task", sorted(HF_CLASSES))
def test_padded_inputs_match_at_real_positions(tmp_path, task, side):
    ref = _hf_reference(task)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _padded(side)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # ptmkit derives these from the mask; transformers is given them
    with torch.no_grad():
        want = _main(ref(input_ids=ids, attention_mask=mask, position_ids=pos))
        got = _main(ours(ids, mask))
        alone = [_main(ours(ids[i:i + 1, mask[i].bool()])) for i in range(len(ids))]  # each row unpadded
    keep = mask.bool()
    if task == "sequence-classification":  # one output per row, read at the last real token
        assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert_close(got, torch.cat(alone), atol=1e-5, rtol=1e-4)
    else:
        assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-4)  # padding positions are don't-care
        assert_close(got[keep], torch.cat([a[0] for a in alone]), atol=1e-5, rtol=1e-4)  # padding changes nothing


def test_greedy_generation_matches_transformers(tmp_path):
    ref = _hf_reference()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    prompt = torch.randint(3, V, (1, 6))
    want = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
    assert want.shape == (1, 14)
    assert ours.generate(prompt, max_new_tokens=8).tolist() == want.tolist()
    assert ours.generate(prompt, max_new_tokens=8, use_cache=False).tolist() == want.tolist()


def test_left_padded_batch_generation_matches_transformers(tmp_path):
    ref = _hf_reference()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _padded("left")
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                        pad_token_id=0)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=6)
    assert got.tolist() == want.tolist()


def test_in_memory_fused_expert_layout_loads_too():
    """transformers 5.x holds experts fused (mlp.experts.gate_up_proj) in memory; its state_dict() converts as well."""
    ref = _hf_reference()
    keys = ref.state_dict().keys()
    assert "model.layers.0.mlp.experts.gate_up_proj" in keys and "model.layers.0.mlp.gate.weight" in keys
    hf_config = {**ref.config.to_dict(), "architectures": ["MixtralForCausalLM"]}
    ours = from_hf(hf_config, dict(ref.state_dict())).eval()
    ids = _ids()
    with torch.no_grad():
        assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_export_writes_what_transformers_saves(tmp_path):
    """HF -> ptmkit -> HF names: the same tensors under the same names as transformers' own save_pretrained."""
    ref = _hf_reference()
    ref.save_pretrained(tmp_path / "hf")
    saved = read_weights(tmp_path / "hf")
    _, exported = hf_state_dict(load_model(tmp_path / "hf"))
    assert sorted(exported) == sorted(saved)
    for name, t in saved.items():
        assert torch.equal(exported[name], t), name


def test_plain_mixtral_config_maps_moe_settings():
    hf = {"model_type": "mixtral", "num_hidden_layers": 4, "num_local_experts": 8, "num_experts_per_tok": 2,
          "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.01}
    cfg = MixtralAdapter().config_from_hf(hf)
    assert cfg.moe == MoEConfig(num_experts=8, top_k=2, every=1, capacity_factor=4.0, eval_capacity_factor=4.0,
                                router_jitter=0.01, aux_loss_coef=0.02 * 2 / 4, z_loss_coef=0.0)
    # keys a config.json leaves out take MixtralConfig's defaults, not LlamaConfig's
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.num_kv_heads, cfg.intermediate_size) == (1e-5, 1e6, 8, 14336)


@pytest.mark.parametrize("change,match", [
    ({"sliding_window": 16}, "sliding_window 16 lets each token attend to the previous 16 tokens only"),
    ({"num_experts_per_tok": 1}, "num_experts_per_tok 1 gives every token a gate of 1.0"),
    ({"ptmkit_moe": {"capacity": 2}}, r"ptmkit_moe has unknown key\(s\) \['capacity'\]"),
])
def test_import_refuses_what_ptmkit_cannot_compute(tmp_path, change, match):
    _hf_reference().save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "hf")


def test_a_window_covering_every_position_is_no_window(tmp_path):
    ref = _hf_reference(sliding_window=64)  # = max_position_embeddings: attends to everything
    ref.save_pretrained(tmp_path / "hf")
    ids = _ids()
    with torch.no_grad():
        assert_close(load_model(tmp_path / "hf").eval()(ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


# ---- ptmkit -> transformers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(HF_CLASSES))
def test_export_loads_in_transformers_with_identical_outputs(tmp_path, task, caplog):
    ours = _ours(task)
    with caplog.at_level(logging.WARNING, logger=MIXTRAL_LOG):
        save_model(ours, tmp_path / "out")
    assert not caplog.records  # dropless, no z-loss: nothing differs from transformers
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["architectures"] == [HF_CLASSES[task].__name__]
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["output_router_logits"]) == (E, K, False)
    auto = {"base": transformers.AutoModel, "causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification}[task]
    ref, info = auto.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(ref) is HF_CLASSES[task]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = _ids()
    with torch.no_grad():
        assert_close(_main(ref.eval()(input_ids=ids)), _main(ours(ids)), atol=1e-5, rtol=1e-4)


def test_tied_embeddings_export(tmp_path):
    ours = _ours(tie_word_embeddings=True)
    save_model(ours, tmp_path / "out")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids()
    with torch.no_grad():
        assert_close(ref(input_ids=ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-4)


def test_round_trip_restores_every_tensor_and_the_training_settings(tmp_path, caplog):
    # ptmkit's default MoE training setup: capacity 1.25 (drops tokens in training), z-loss, sequence groups
    moe = {"num_experts": E, "top_k": K, "every": 1, "aux_loss_coef": 0.03, "routing_groups": "sequence"}
    ours = _ours("causal-lm", moe)
    with caplog.at_level(logging.WARNING, logger=MIXTRAL_LOG):
        save_model(ours, tmp_path / "out")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "capacity_factor 1.25 drops tokens" in text and "router z-loss" in text
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["router_aux_loss_coef"] == pytest.approx(0.03 * LAYERS / K)  # Mixtral's pooled-loss weight
    back = load_model(tmp_path / "out")
    assert backbone_of(back).config == backbone_of(ours).config  # ptmkit_moe restores capacity, z-loss, groups
    want, got = ours.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


# ---- what Mixtral cannot express -------------------------------------------------------------------------------------


@pytest.mark.parametrize("moe,extra,match", [
    ({"every": 2}, {}, r"moe.every 2 leaves layers \[0\] dense.*fix: moe.every: 1"),
    ({"top_k": 1}, {}, r"moe.top_k 1 gates each token by its raw router probability.*fix: moe.top_k >= 2"),
    ({"normalize_gates": False}, {}, r"moe.normalize_gates false.*fix: moe.normalize_gates: null"),
    ({}, {"mlp_bias": True}, r"Mixtral's attention and experts have no biases"),
])
def test_export_refuses_moe_settings_mixtral_cannot_express(tmp_path, moe, extra, match):
    ours = _ours("causal-lm", {**DROPLESS, **moe}, **extra)
    with pytest.raises(CheckpointError, match=f"no Mixtral checkpoint form(?s:.*){match}(?s:.*)training checkpoint"):
        save_model(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_export_warns_when_evaluation_drops_tokens(tmp_path, caplog):
    ours = _ours("causal-lm", {**DROPLESS, "eval_capacity_factor": 1.0})
    with caplog.at_level(logging.WARNING, logger=MIXTRAL_LOG):
        save_model(ours, tmp_path / "out")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "eval_capacity_factor 1.0 < num_experts / top_k = 2.0" in text and "never drops tokens" in text


def test_sparse_gpt2_has_no_hugging_face_form(tmp_path):
    cfg = make_config("gpt2", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2,
                                   moe={"num_experts": E, "every": 1}))
    with pytest.raises(CheckpointError, match="gpt2 model with Mixture-of-Experts layers has no Hugging Face") as e:
        save_model(build_model("gpt2", cfg, "causal-lm"), tmp_path / "out")
    assert "not written" not in str(e.value) and "Mixtral" in str(e.value)


# ---- ptm pretrain's final export -------------------------------------------------------------------------------------


class _Tokenizer:
    def save(self, path):
        (path / "tokenizer.json").write_text("{}")


def test_pretraining_writes_a_mixtral_model_dir_and_skips_models_without_a_form(tmp_path, caplog):
    from ptmkit.recipes.pretrain import save_trained

    written = save_trained(_ours(), object(), _Tokenizer(), tmp_path / "llama" / "model", tmp_path / "llama" / "gen")
    assert written == {"model_dir": str(tmp_path / "llama" / "model")}
    assert json.loads((tmp_path / "llama" / "model" / "config.json").read_text())["model_type"] == "mixtral"

    sparse_llama = _ours("causal-lm", {**DROPLESS, "every": 2})
    assert save_trained(sparse_llama, object(), _Tokenizer(), tmp_path / "every2" / "model", tmp_path / "g") == {}
    out = caplog.text  # the ptmkit logger's warning
    assert "not writing" in out and "moe.every 2" in out and "training checkpoint holds the trained weights" in out
    assert not (tmp_path / "every2").exists()
