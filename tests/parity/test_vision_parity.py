"""Parity with transformers for the vision families: tiny random ViTModel and CLIPModel (random norms and biases)
convert into ptmkit and compute the same outputs, padded text included; ptmkit's exports load back into transformers
with every tensor accounted for and the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.models import load_model, save_model
from ptmkit.models.clip import CLIPModel, eos_positions
from tests.parity.hf_tiny import randomise_norms_and_biases

TOL = dict(atol=1e-5, rtol=1e-4)
V, PAD, BOS = 50, 0, 1
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
              patch_size=8)


def _vit(**extra):
    cfg = T.ViTConfig(**VISION, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)
    return randomise_norms_and_biases(T.ViTModel(cfg).eval())


def _clip(eos: int):
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V,
                max_position_embeddings=16, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=eos)
    cfg = T.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24, logit_scale_init_value=2.0)
    return randomise_norms_and_biases(T.CLIPModel(cfg).eval())


def _pixels(n=3, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _texts(eos: int):
    """Three captions, the second and third right-padded; eos ends each (a legacy config pools the highest id, so
    there the end token gets the highest id too, as OpenAI's tokenizer makes it)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V - 1 if eos == 2 else V, (3, 9), generator=g)
    ids[ids == eos] = 4
    mask = torch.ones_like(ids)
    end = V - 1 if eos == 2 else eos
    for row, length in ((0, 9), (1, 6), (2, 3)):
        ids[row, 0] = BOS
        ids[row, length - 1] = end
        ids[row, length:] = PAD
        mask[row, length:] = 0
    return ids, mask


def test_vit_import_export(tmp_path):
    ref = _vit()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    x = _pixels()
    with torch.no_grad():
        want = ref(pixel_values=x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    assert_close(got.last_hidden_state, want.last_hidden_state, **TOL)
    assert_close(got.pooler_output, want.pooler_output, **TOL)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert_close(g, w, **TOL)

    save_model(ours, tmp_path / "ours")
    names = load_file(tmp_path / "ours" / "model.safetensors")
    assert "encoder.layer.0.attention.attention.query.weight" in names  # the Hub's names, read by every version
    back, info = T.ViTModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        assert_close(back.eval()(pixel_values=x).pooler_output, want.pooler_output, **TOL)


def test_vit_loads_hub_names_and_a_classifier_prefix(tmp_path):
    """A checkpoint in the Hub's layout (what ptmkit exports, and what transformers 4 wrote) under `vit.` loads."""
    ref = _vit()
    save_model(load_model(_saved(ref, tmp_path / "hf")), tmp_path / "hub")
    state = load_file(tmp_path / "hub" / "model.safetensors")
    (tmp_path / "prefixed").mkdir()
    save_file({"vit." + k: v for k, v in state.items()}, tmp_path / "prefixed" / "model.safetensors")
    (tmp_path / "prefixed" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    ours = load_model(tmp_path / "prefixed").eval()
    x = _pixels()
    with torch.no_grad():
        assert_close(ours(x).pooler_output, ref(pixel_values=x).pooler_output, **TOL)


def test_vit_without_qkv_bias(tmp_path):
    ref = _vit(qkv_bias=False)
    ours = load_model(_saved(ref, tmp_path / "hf")).eval()
    assert ours.layers[0].attn.qkv.bias is None
    x = _pixels()
    with torch.no_grad():
        assert_close(ours(x).last_hidden_state, ref(pixel_values=x).last_hidden_state, **TOL)
    save_model(ours, tmp_path / "ours")
    back, info = T.ViTModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("eos", [3, 2], ids=["eos-id", "legacy-argmax"])
def test_clip_import_export_with_padded_text(tmp_path, eos):
    ref = _clip(eos)
    ours = load_model(_saved(ref, tmp_path / "hf")).eval()
    assert isinstance(ours, CLIPModel) and ours.config.text.eos_token_id == eos
    ids, mask = _texts(eos)
    x = _pixels()
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=x, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, x, mask, output_hidden_states=True)
        assert_close(got.logits_per_image, want.logits_per_image, **TOL)
        assert_close(got.logits_per_text, want.logits_per_text, **TOL)
        assert_close(got.text_embeds, want.text_embeds, **TOL)
        assert_close(got.image_embeds, want.image_embeds, **TOL)
        keep = mask.bool()  # padded positions are don't-care; every real token's state matches
        for g, w in zip(got.text_hidden_states, want.text_model_output.hidden_states):
            assert_close(g[keep], w[keep], **TOL)
        assert_close(ours.encode_text(ids, mask), ref.get_text_features(input_ids=ids, attention_mask=mask)
                     .pooler_output, **TOL)
        assert_close(ours.encode_image(x), ref.get_image_features(pixel_values=x).pooler_output, **TOL)

    save_model(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["CLIPModel"] and cfg["text_config"]["eos_token_id"] == eos
    back, info = T.CLIPModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        again = back.eval()(input_ids=ids, pixel_values=x, attention_mask=mask)
    assert_close(again.logits_per_image, want.logits_per_image, **TOL)
    reloaded = load_model(tmp_path / "ours").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids, x, mask).logits_per_image, got.logits_per_image)


def test_text_without_an_end_token_is_refused():
    ids = torch.tensor([[1, 5, 6, 3], [1, 5, 6, 7]])
    assert eos_positions(ids[:1], 3).tolist() == [3]
    with pytest.raises(ValueError, match="text row 1 has no end-of-text token"):
        eos_positions(ids, 3)
    assert eos_positions(ids, 2).tolist() == [2, 3]  # legacy configs: the highest id, wherever it is


def test_logit_scale_is_capped_at_100():
    from ptmkit.models import build_model, make_config
    model = build_model("clip", make_config("clip", dict(
        text=dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                  max_position_embeddings=16, eos_token_id=3),
        vision=dict(image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        projection_dim=24)))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    assert model.scale().item() == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="exceeds ln\\(100\\)"):
        make_config("clip", dict(logit_scale_init=5.0))


def test_image_size_not_divisible_by_the_patch_size():
    from ptmkit.models import make_config
    with pytest.raises(ConfigError, match="image_size 64 is not divisible by patch_size 10.*e.g. \\[4, 8, 16\\]"):
        make_config("vit", dict(image_size=64, patch_size=10))
    with pytest.raises(ConfigError, match="not divisible by patch_size 7"):
        make_config("clip", dict(vision=dict(image_size=64, patch_size=7)))


def test_wrong_image_size_names_the_fix(tmp_path):
    ours = load_model(_saved(_vit(), tmp_path / "hf"))
    with pytest.raises(ValueError, match="resize the images to image_size 16"):
        ours(torch.randn(1, 3, 32, 32))


def _saved(ref, path):
    ref.save_pretrained(path)
    return path
