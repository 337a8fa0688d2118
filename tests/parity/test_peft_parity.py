"""Parity with PEFT: adapters trained in ptmkit run in `peft` on the exported transformers model with the same
logits, and adapters made with `peft` load into ptmkit with the same logits (atol 1e-5), for LoRA and IA3 on an
encoder (BERT), a decoder with fused q/k/v stored transposed (GPT-2) and a grouped-query decoder (LLaMA).

ptmkit fuses q, k and v into one matmul; PEFT adapts transformers' separate q_proj/v_proj (or GPT-2's fused c_attn
in its own row order), so these tests are what shows the split and re-fusion of the adapter tensors is exact.
"""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers as T
from torch.testing import assert_close

from ptmkit import adapt
from ptmkit.adapt.peft_io import load_adapter, save_adapter
from ptmkit.config import ConfigError
from ptmkit.models import load_model, save_model
from tests.parity.hf_tiny import make_reference

TOL = dict(atol=1e-5, rtol=1e-4)
HF_CLASS = {"bert": T.BertForMaskedLM, "gpt2": T.GPT2LMHeadModel, "llama": T.LlamaForCausalLM}
TASK = {"bert": "masked-lm", "gpt2": "causal-lm", "llama": "causal-lm"}
# method -> family -> (ptmkit options, the PEFT config of the same method for the import direction)
PEFT_TARGETS = {"bert": (["query", "value"], ["key", "value", "output.dense"], ["output.dense"]),
                "gpt2": (["c_attn"], ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
                "llama": (["q_proj", "v_proj"], ["k_proj", "v_proj", "down_proj"], ["down_proj"])}
OURS = {"lora": {"rank": 4, "alpha": 8.0, "targets": ["q", "v", "ffn.up"]},
        "ia3": {}}


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(seed))


def _train_a_little(model) -> None:
    """Three Adam steps on the delta parameters alone (from a perturbed start, so every tensor moves)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adapt.delta_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    adapt.freeze_except(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(_ids(1)).logits.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _base_dir(family: str, tmp_path):
    ref = make_reference(family, TASK[family]).eval()
    ref.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", sorted(HF_CLASS))
def test_a_ptmkit_adapter_runs_in_peft(family, method, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    model = load_model(base_dir).eval()
    adapt.apply(model, method, OURS[method])
    _train_a_little(model)
    model.eval()
    ours = model(_ids()).logits
    with adapt.disabled(model):
        assert (model(_ids()).logits - ours).abs().max() > 1e-3, "the adapter does not change the logits"
    save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "ptmkit_adapter.json"]
    hf = HF_CLASS[family].from_pretrained(base_dir).eval()
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert_close(theirs(input_ids=_ids()).logits, ours, **TOL)
    # and back: the saved adapter loads onto a fresh base model with the same logits
    again = load_adapter(load_model(base_dir).eval(), tmp_path / "adapter")
    assert_close(again(_ids()).logits, ours, **TOL)


def _peft_config(family: str, method: str):
    lora_targets, ia3_targets, ff = PEFT_TARGETS[family]
    if method == "lora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets, init_lora_weights=False,
                               fan_in_fan_out=family == "gpt2")
    return peft.IA3Config(target_modules=ia3_targets, feedforward_modules=ff, init_ia3_weights=False,
                          fan_in_fan_out=family == "gpt2")


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", sorted(HF_CLASS))
def test_a_peft_adapter_loads_into_ptmkit(family, method, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    torch.manual_seed(7)  # init_*_weights=False: PEFT draws non-trivial adapter values
    theirs = peft.get_peft_model(HF_CLASS[family].from_pretrained(base_dir).eval(), _peft_config(family, method))
    theirs.eval()
    expected = theirs(input_ids=_ids()).logits
    with theirs.disable_adapter():
        assert (theirs(input_ids=_ids()).logits - expected).abs().max() > 1e-3, "the adapter changes nothing"
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(load_model(base_dir).eval(), tmp_path / "peft")
    assert_close(model(_ids()).logits, expected, **TOL)
    # re-saved by ptmkit, the adapter still runs in PEFT with the same logits
    save_adapter(model, tmp_path / "resaved", base_model=base_dir)
    hf = HF_CLASS[family].from_pretrained(base_dir).eval()
    assert_close(peft.PeftModel.from_pretrained(hf, tmp_path / "resaved")(input_ids=_ids()).logits, expected, **TOL)


def test_an_adapter_for_another_base_model_is_an_error(tmp_path):
    model = load_model(_base_dir("llama", tmp_path))
    adapt.apply(model, "lora")
    save_adapter(model, tmp_path / "adapter")
    other = load_model(_base_dir("bert", tmp_path / "b"))
    with pytest.raises(ConfigError, match="another base model"):
        load_adapter(other, tmp_path / "adapter")


def test_the_adapter_never_lands_in_the_base_model_directory(tmp_path):
    base_dir = _base_dir("gpt2", tmp_path)
    before = (base_dir / "model.safetensors").read_bytes()
    model = load_model(base_dir)
    adapt.apply(model, "lora")
    with pytest.raises(ConfigError, match="base model's directory"):
        save_adapter(model, base_dir, base_model=base_dir)
    save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    assert (base_dir / "model.safetensors").read_bytes() == before
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir)


@pytest.mark.parametrize("method", ["bitfit", "houlsby", "pfeiffer", "feature"])
def test_methods_peft_lacks_round_trip_in_the_same_layout(method, tmp_path):
    base_dir = _base_dir("bert", tmp_path)
    task = dict(task="sequence-classification", num_labels=3) if method == "feature" else {}
    model = load_model(base_dir, **task).eval()
    adapt.apply(model, method, {"mix": True} if method == "feature" else None)
    _train_a_little(model)
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == f"PTMKIT_{method.upper()}"
    again = load_adapter(load_model(base_dir, **task).eval(), tmp_path / "adapter")
    assert_close(again(_ids()).logits, model(_ids()).logits, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["prefix", "ptuning-v2"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_ptmkit_prefix_runs_in_peft(family, method, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    model = load_model(base_dir).eval()
    adapt.apply(model, method, {"num_virtual_tokens": 5, "projection_hidden": 16})
    _train_a_little(model)
    model.eval()
    ours = model(_ids()).logits
    save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    hf = HF_CLASS[family].from_pretrained(base_dir).eval()
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert_close(theirs(input_ids=_ids()).logits, ours, **TOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_peft_prefix_loads_into_ptmkit(family, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    torch.manual_seed(7)
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True,
                                     encoder_hidden_size=16)
    theirs = peft.get_peft_model(HF_CLASS[family].from_pretrained(base_dir).eval(), config).eval()
    expected = theirs(input_ids=_ids()).logits
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(load_model(base_dir).eval(), tmp_path / "peft")
    assert_close(model(_ids()).logits, expected, **TOL)


P = 5  # virtual tokens


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_ptmkit_prompt_runs_in_peft(family, method, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    model = load_model(base_dir).eval()
    adapt.apply(model, method, {"num_virtual_tokens": P})
    _train_a_little(model)
    model.eval()
    ours = model(_ids()).logits  # (B, T, V): the prompt positions are dropped
    save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    hf = HF_CLASS[family].from_pretrained(base_dir).eval()
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert_close(theirs(input_ids=_ids()).logits[:, P:], ours, **TOL)  # PEFT keeps the P prompt positions


@pytest.mark.parametrize("kind", ["prompt", "ptuning"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_peft_prompt_loads_into_ptmkit(family, kind, tmp_path):
    base_dir = _base_dir(family, tmp_path)
    torch.manual_seed(7)
    config = (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P) if kind == "prompt" else
              peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, encoder_hidden_size=16))
    theirs = peft.get_peft_model(HF_CLASS[family].from_pretrained(base_dir).eval(), config).eval()
    expected = theirs(input_ids=_ids()).logits[:, P:]
    theirs.save_pretrained(tmp_path / "peft")
    model = load_adapter(load_model(base_dir).eval(), tmp_path / "peft")
    assert_close(model(_ids()).logits, expected, **TOL)


def test_a_peft_adapter_without_sidecar_is_still_checked(tmp_path):
    """An adapter written by PEFT carries no ptmkit sidecar: its module names and tensor shapes are checked."""
    base_dir = _base_dir("llama", tmp_path)
    theirs = peft.get_peft_model(T.LlamaForCausalLM.from_pretrained(base_dir), _peft_config("llama", "lora"))
    theirs.save_pretrained(tmp_path / "peft")
    with pytest.raises(ConfigError, match="which this bert model does not have"):
        load_adapter(load_model(_base_dir("bert", tmp_path / "b")), tmp_path / "peft")
    wider = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=101, hidden_size=96, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=96))
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(ConfigError, match="trained on a base model of another size"):
        load_adapter(load_model(tmp_path / "wider"), tmp_path / "peft")


def test_several_methods_reload_in_the_order_they_were_applied(tmp_path):
    base_dir = _base_dir("llama", tmp_path)
    model = load_model(base_dir).eval()
    adapt.apply(model, "lora")
    adapt.apply(model, "ia3")  # both on the fused qkv: (W x + B A x) * l, not W x * l + B A x
    _train_a_little(model)
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    again = load_adapter(load_model(base_dir).eval(), tmp_path / "adapter")
    assert list(adapt.base.applied(again)) == ["lora", "ia3"]
    assert_close(again(_ids()).logits, model(_ids()).logits, **TOL)
