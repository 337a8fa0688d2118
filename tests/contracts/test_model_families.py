"""Contract: every registered model family (ptmkit.models.registry.FAMILIES) works end to end at tiny size.

For each family (2 layers, width 64): it builds; a forward and backward pass gives a finite loss and a gradient on
every trainable parameter; save_model/load_model round-trips it with identical outputs; and, where transformers has
the family, the exported directory loads in transformers with the same outputs and a transformers model of that
config loads back into ptmkit with the same outputs. Families with no transformers form are listed in NO_HF_FORM with
the reason, and the test asserts the documented refusal. The Mixture-of-Experts variant of every family whose config
has `moe` is checked against MOE_ADAPTERS the same way (LLaMA + MoE <-> Mixtral; the others refuse to export).

The tests are parametrised over the registry dicts themselves, so a new family is tested the moment it is added:
its cases fail until TINY and HF_FORM or NO_HF_FORM describe it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers as T
from torch.testing import assert_close

from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.registry import FAMILIES, MOE_ADAPTERS, PRESETS, backbone_of, family
from tests.parity.hf_tiny import randomise_norms_and_biases

V = 101
B, L = 2, 10  # batch, length
TOL = dict(atol=1e-5, rtol=1e-4)
EXACT = dict(atol=0.0, rtol=0.0)
_SIZE = dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)

# family -> (config overrides at tiny size, the task tested: the family's pre-training head, input kind)
TINY: dict[str, tuple[dict, str, str]] = {
    "bert": (dict(_SIZE, max_position_embeddings=64), "masked-lm", "tokens"),
    "roberta": (dict(_SIZE, max_position_embeddings=66), "masked-lm", "tokens"),  # positions start at pad + 1
    # THU-ERNIE: 1 BERT layer + 2 aggregators (the first with an entity output), fed aligned entity ids
    "ernie-thu": (dict(_SIZE, max_position_embeddings=64, num_layers=3, num_knowledge_layers=2, num_entities=12,
                       entity_size=16, entity_heads=2), "knowledge-masked-lm", "entities"),
    "megatron-bert": (dict(_SIZE, max_position_embeddings=64), "masked-lm", "tokens"),
    "gpt2": (dict(_SIZE, max_position_embeddings=64, bos_token_id=0, eos_token_id=0), "causal-lm", "tokens"),
    "llama": (dict(_SIZE, num_kv_heads=2, max_position_embeddings=64), "causal-lm", "tokens"),
    "electra": (dict(_SIZE, embedding_size=32, max_position_embeddings=64), "replaced-token-detection", "tokens"),
    "t5": (dict(_SIZE), "seq2seq-lm", "seq2seq"),
    "t5-encoder": (dict(_SIZE), "base", "tokens"),
    "bart": (dict(_SIZE, max_position_embeddings=64), "seq2seq-lm", "seq2seq"),
    "mbart": (dict(_SIZE, max_position_embeddings=64), "seq2seq-lm", "seq2seq"),
    "xlnet": (dict(_SIZE, mem_len=8), "permutation-lm", "xlnet"),
    "transfo-xl": (dict(_SIZE, segment_len=16, mem_len=8), "causal-lm", "tokens"),
    "albert": (dict(_SIZE, embedding_size=32, max_position_embeddings=64), "masked-lm-sop", "tokens"),
    "vit": (dict(image_size=16, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
            "base", "image"),
    "clip": (dict(text=dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                            max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=3),
                  vision=dict(image_size=16, patch_size=8, hidden_size=64, num_layers=2, num_heads=4,
                              intermediate_size=128),
                  projection_dim=32), "base", "image-text"),
    # VQ-VAE image tokenizer: 16 px -> a 4 x 4 grid of 16 codes (the pixels in, the reconstruction out)
    "vqvae": (dict(image_size=16, num_downsamples=2, hidden_size=32, residual_hidden_size=8, codebook_size=16,
                   embedding_dim=8), "image-reconstruction", "image"),
    # vision-language encoders over caption tokens and 2 x 2 patches (a masked patch included)
    "visualbert": (dict(_SIZE, max_position_embeddings=16, image_size=16, patch_size=8, num_visual_classes=8),
                   "vl-pretraining", "vision-language"),
    "lxmert": (dict({k: v for k, v in _SIZE.items() if k != "num_layers"}, num_text_layers=1, num_image_layers=1,
                    num_cross_layers=1, max_position_embeddings=16, image_size=16, patch_size=8, num_visual_classes=8),
               "vl-pretraining", "vision-language"),
}

# family -> the transformers class its tested task exports to and imports from
HF_FORM: dict[str, type] = {
    "bert": T.BertForMaskedLM,
    "roberta": T.RobertaForMaskedLM,
    "megatron-bert": T.MegatronBertForMaskedLM,
    "gpt2": T.GPT2LMHeadModel,
    "llama": T.LlamaForCausalLM,
    "electra": T.ElectraForPreTraining,
    "t5": T.T5ForConditionalGeneration,
    "t5-encoder": T.T5EncoderModel,
    "bart": T.BartForConditionalGeneration,
    "mbart": T.MBartForConditionalGeneration,
    "xlnet": T.XLNetLMHeadModel,
    "albert": T.AlbertForPreTraining,
    "vit": T.ViTModel,
    "clip": T.CLIPModel,
}

# family -> (why it has no transformers form, the model_type its ptmkit-only directory carries)
NO_HF_FORM: dict[str, tuple[str, str]] = {
    "transfo-xl": ("transformers v5 removed Transformer-XL (its TransfoXL classes used an adaptive softmax ptmkit "
                   "leaves out); ptmkit writes its own tensor names under a model_type of its own "
                   "(models/convert/transfo_xl.py), which transformers refuses", "ptmkit-transfo-xl"),
    "visualbert": ("transformers' VisualBertModel reads detector region features (visual_embeds), not pixels: ptmkit "
                   "writes its own tensor names (models/convert/vl.py)", "ptmkit-visualbert"),
    "lxmert": ("transformers' LxmertModel reads detector features and boxes, not pixels: ptmkit writes its own "
               "tensor names (models/convert/vl.py)", "ptmkit-lxmert"),
    "vqvae": ("transformers has no VQ-VAE (diffusers' VQModel is another layout): ptmkit writes its own tensor names "
              "and codebook buffers (models/convert/vqvae.py)", "ptmkit-vqvae"),
    "ernie-thu": ("transformers has no THU-ERNIE (Zhang et al. 2019; its 'ernie' is Baidu's ERNIE): ptmkit writes "
                  "its own tensor names (models/convert/ernie.py)", "ptmkit-ernie-thu"),
}

# The sparse forms of MOE_ADAPTERS, by family: the transformers class a dropless top-2 MoE model exports to.
MOE_HF: dict[str, type] = {"llama": T.MixtralForCausalLM}
MOE = dict(num_experts=4, top_k=2, every=1, capacity_factor=2.0, eval_capacity_factor=2.0, z_loss_coef=0.0)
MOE_FAMILIES = sorted(n for n, f in FAMILIES.items() if "moe" in {x.name for x in dataclasses.fields(f.config)})


def _spec(name: str) -> tuple[dict, str, str]:
    if name not in TINY:
        pytest.fail(f"model family {name!r} is registered but has no tiny spec: add it to TINY (and to HF_FORM, or "
                    "to NO_HF_FORM with the reason) in tests/contracts/test_model_families.py")
    return TINY[name]


def _build(name: str, **extra):
    overrides, task, _ = _spec(name)
    model = build_model(name, make_config(name, {**overrides, **extra}), task)
    return randomise_norms_and_biases(model, seed=1)  # random norms and biases: a swapped one shows up


def _inputs(name: str, padded: bool):
    """(args, kwargs) for ptmkit and the matching kwargs for transformers. Padded rows pad on the right (XLNet on the
    left, where its <cls> is last); padding is only used between ptmkit models (parity tests cover it against HF)."""
    kind = _spec(name)[2]
    pixels = torch.randn(B, 3, 16, 16)
    if kind == "image":  # vision families read pixels only
        return [pixels], {}, dict(pixel_values=pixels)
    ids = torch.randint(6, V, (B, L))
    mask = torch.ones_like(ids)
    if padded:
        if kind == "xlnet":
            mask[1, :3] = 0
        else:
            mask[1, 7:] = 0
    ours_args, ours_kw = [ids, mask], {}
    hf = dict(input_ids=ids, attention_mask=mask)
    if kind == "entities":  # ERNIE: two or three aligned entities per row, so entity attention has keys to weigh
        ours_kw["entity_ids"] = torch.zeros_like(ids)
        ours_kw["entity_ids"][:, [1, 4, 6]] = torch.randint(1, 13, (B, 3))
    if kind == "image-text":  # CLIP: captions that end with the end-of-text token (id 3), padded ones included
        ids[:, 0] = 1
        ids[torch.arange(B), mask.sum(-1) - 1] = 3
        ours_args = [ids, pixels, mask]
        hf = dict(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    if kind == "vision-language":  # caption + image in one call; one patch masked so the [MASK] vector is used
        image_mask = torch.zeros(B, 4, dtype=torch.bool)
        image_mask[:, 1] = True
        ours_args, ours_kw = [ids, pixels, mask], {"image_mask": image_mask}
    if kind == "seq2seq":
        dec = torch.randint(6, V, (B, 7))
        ours_args.append(dec)
        hf["decoder_input_ids"] = dec
    if kind == "xlnet":  # segments and the two-stream path (perm_mask + target_mapping): every XLNet tensor is used
        types = torch.zeros_like(ids)
        types[:, 6:] = 1
        perm = torch.zeros(B, L, L)
        perm[:, :, -2:] = 1.0  # nobody sees the last two tokens, the ones predicted
        mapping = torch.nn.functional.one_hot(torch.tensor([L - 2, L - 1]), L).float().expand(B, 2, L)
        ours_args.append(types)
        ours_kw.update(perm_mask=perm, target_mapping=mapping)
        hf.update(token_type_ids=types, perm_mask=perm, target_mapping=mapping)
    return ours_args, ours_kw, hf


def _tensors(out) -> dict[str, torch.Tensor]:
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out) if torch.is_tensor(getattr(out, f.name))}


# ptmkit output field -> the transformers field holding the same tensor
_SAME = (("logits", "logits"), ("logits", "prediction_logits"), ("pair_logits", "sop_logits"),
         ("last_hidden_state", "last_hidden_state"), ("encoder_last_hidden_state", "encoder_last_hidden_state"),
         ("pooler_output", "pooler_output"), ("logits_per_image", "logits_per_image"),
         ("text_embeds", "text_embeds"), ("image_embeds", "image_embeds"))


def _compare_with_hf(ours_out, hf_out) -> list[str]:
    compared = []
    for mine, theirs in _SAME:
        a, b = getattr(ours_out, mine, None), getattr(hf_out, theirs, None)
        if torch.is_tensor(a) and torch.is_tensor(b):
            assert_close(a, b, **TOL, msg=lambda m: f"{mine} vs transformers' {theirs}: {m}")
            compared.append(mine)
    assert {"logits", "last_hidden_state", "logits_per_image"} & set(compared), (type(ours_out), type(hf_out))
    return compared


def _check_gradients(model, loss):
    assert torch.isfinite(loss), loss
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"


# ---- the registry is fully described -----------------------------------------------------------------------------


def test_every_family_is_described():
    assert set(TINY) == set(FAMILIES), "TINY must name exactly the registered families"
    assert not set(HF_FORM) & set(NO_HF_FORM), "a family either has a transformers form or is listed without one"
    assert set(HF_FORM) | set(NO_HF_FORM) == set(FAMILIES), "every family: HF_FORM, or NO_HF_FORM with the reason"
    assert set(MOE_HF) == set(MOE_ADAPTERS), "every MoE checkpoint form needs its transformers class in MOE_HF"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_names_a_family_and_a_valid_config(preset):
    name, params = PRESETS[preset]
    family(name)
    make_config(name, params)  # unknown keys and bad values raise


# ---- every family ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_forward_and_backward(name):
    model = _build(name).train()
    assert backbone_of(model).family == name
    args, kw, _ = _inputs(name, padded=True)
    out = model(*args, **kw)
    tensors = _tensors(out)
    assert tensors, f"{type(out).__name__} holds no tensor"
    loss = sum(t.float().square().mean() for t in tensors.values())
    _check_gradients(model, loss)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_save_load_round_trip(tmp_path, name):
    model = _build(name).eval()
    save_model(model, tmp_path / "model")
    back = load_model(tmp_path / "model").eval()
    assert type(back) is type(model) and backbone_of(back).family == name
    assert backbone_of(back).config == backbone_of(model).config
    want, got = model.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    args, kw, _ = _inputs(name, padded=True)
    with torch.no_grad():
        a, b = _tensors(model(*args, **kw)), _tensors(back(*args, **kw))
    assert sorted(a) == sorted(b) and a
    for field in a:
        assert_close(b[field], a[field], **EXACT, msg=lambda m: f"{field}: {m}")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_transformers_export_and_import(tmp_path, name):
    model = _build(name).eval()
    if name in NO_HF_FORM:
        _, model_type = NO_HF_FORM[name]
        save_model(model, tmp_path / "ours")
        assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == model_type
        with pytest.raises(ValueError, match=model_type):
            T.AutoConfig.from_pretrained(tmp_path / "ours")
        return
    if name not in HF_FORM:
        pytest.fail(f"model family {name!r}: add its transformers class to HF_FORM, or list it in NO_HF_FORM with "
                    "the reason")
    cls = HF_FORM[name]
    args, kw, hf_kw = _inputs(name, padded=False)

    # export: transformers loads our directory, every tensor accounted for, and computes what ptmkit computes
    save_model(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [cls.__name__]
    ref, info = cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        _compare_with_hf(model(*args, **kw), ref.eval()(**hf_kw))

    # import: a transformers model of that config (its own initialisation, random norms and biases) loads here
    fresh = randomise_norms_and_biases(cls(ref.config).eval(), seed=2)
    fresh.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    assert type(ours) is type(model) and backbone_of(ours).family == name
    with torch.no_grad():
        _compare_with_hf(ours(*args, **kw), fresh(**hf_kw))


# ---- the Mixture-of-Experts variant of every family that has one ---------------------------------------------------


@pytest.mark.parametrize("name", MOE_FAMILIES)
def test_moe_variant(tmp_path, name):
    model = _build(name, moe=dict(MOE)).train()
    args, kw, hf_kw = _inputs(name, padded=True)
    out = model(*args, **kw)
    _check_gradients(model, sum(t.float().square().mean() for t in _tensors(out).values()))
    model.eval()
    if name not in MOE_ADAPTERS:
        with pytest.raises(CheckpointError, match=f"a {name} model with Mixture-of-Experts layers has no Hugging Face"):
            save_model(model, tmp_path / "ours")
        assert not (tmp_path / "ours").exists()
        return
    cls = MOE_HF[name]
    save_model(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [cls.__name__]
    back = load_model(tmp_path / "ours").eval()
    assert backbone_of(back).config == backbone_of(model).config
    ref, info = cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    args, kw, hf_kw = _inputs(name, padded=False)
    with torch.no_grad():
        want = model(*args, **kw)
        assert_close(back(*args, **kw).logits, want.logits, **EXACT)
        _compare_with_hf(want, ref.eval()(**hf_kw))
