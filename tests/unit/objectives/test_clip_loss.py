"""CLIP's symmetric contrastive loss (objectives/clip.py): the hand-computed value, symmetry, the learnable and capped
temperature, transformers' CLIPModel loss on the same model, and the registry wiring."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from torch import nn

from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, load_model, make_config
from ptmkit.objectives import OBJECTIVES
from ptmkit.objectives.clip import CLIPContrastive, CLIPLossConfig
from tests.parity.hf_tiny import randomise_norms_and_biases


class _Fixed(nn.Module):
    """encode_image / encode_text return fixed vectors; the temperature is a real learnable parameter."""

    def __init__(self, image, text, logit_scale):
        super().__init__()
        self.image, self.text = image, text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def encode_image(self, pixel_values):
        return self.image

    def encode_text(self, input_ids, attention_mask=None):
        return self.text

    def scale(self, cap):
        return self.logit_scale.clamp(max=math.log(cap)).exp()


def _batch(b):
    return {"pixel_values": torch.zeros(b, 3, 4, 4), "input_ids": torch.zeros(b, 3, dtype=torch.long)}


def test_registered_and_needs_the_clip_family():
    assert OBJECTIVES["clip"] == (CLIPLossConfig, CLIPContrastive)
    with pytest.raises(ConfigError, match="use model family clip"):
        build_model("bert", make_config("bert", dict(vocab_size=32, hidden_size=32, num_layers=1, num_heads=2,
                                                     intermediate_size=64)), CLIPContrastive.task)
    with pytest.raises(ConfigError, match="max_logit_scale must be a number > 1"):
        from_dict(CLIPLossConfig, {"max_logit_scale": 0.5})


def test_hand_computed_two_pairs():
    # images e1, e2; texts e1, (e1 + e2)/√2: cos = [[1, c], [0, c]], c = 1/√2; scale 2 (logit_scale ln 2)
    image = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    text = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    s = 2.0
    c = 1 / math.sqrt(2)
    logits = [[s, s * c], [0.0, s * c]]  # logits_per_image
    ce = lambda row, i: -math.log(math.exp(row[i]) / sum(math.exp(v) for v in row))  # noqa: E731
    image_loss = (ce(logits[0], 0) + ce(logits[1], 1)) / 2  # each image picks its caption
    cols = [[logits[0][0], logits[1][0]], [logits[0][1], logits[1][1]]]
    text_loss = (ce(cols[0], 0) + ce(cols[1], 1)) / 2  # each caption picks its image
    loss, metrics = CLIPContrastive().loss(_Fixed(image, text, math.log(s)), _batch(2))
    assert loss.item() == pytest.approx((image_loss + text_loss) / 2, rel=1e-6)
    assert metrics["logit_scale"] == pytest.approx(2.0)
    assert metrics["image_to_text_accuracy"] == 1.0 and metrics["text_to_image_accuracy"] == 0.5


def test_symmetric_in_images_and_texts():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    one, _ = CLIPContrastive().loss(_Fixed(a, b, 1.3), _batch(5))
    swapped, _ = CLIPContrastive().loss(_Fixed(b, a, 1.3), _batch(5))
    assert one.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_temperature_learns_and_is_capped_at_100():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    model = _Fixed(a, b, math.log(1 / 0.07))
    CLIPContrastive().loss(model, _batch(4))[0].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    capped = _Fixed(a, b, math.log(500.0))  # above the cap: the loss uses 100, and no gradient pushes further
    loss, metrics = CLIPContrastive().loss(capped, _batch(4))
    loss.backward()
    assert metrics["logit_scale"] == pytest.approx(100.0)
    assert capped.logit_scale.grad.item() == 0.0
    at_cap, _ = CLIPContrastive().loss(_Fixed(a, b, math.log(100.0)), _batch(4))
    assert loss.item() == pytest.approx(at_cap.item(), rel=1e-6)
    lower, m = CLIPContrastive(CLIPLossConfig(max_logit_scale=10.0)).loss(_Fixed(a, b, math.log(500.0)), _batch(4))
    assert m["logit_scale"] == pytest.approx(10.0)


def test_equals_transformers_clip_loss(tmp_path):
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=40,
                max_position_embeddings=8, pad_token_id=0, bos_token_id=1, eos_token_id=3)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16,
                  patch_size=8)
    ref = randomise_norms_and_biases(T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision,
                                                              projection_dim=16)).eval())
    ref.save_pretrained(tmp_path)
    ours = load_model(tmp_path).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (4, 6), generator=g)
    ids[:, 0], ids[:, -1] = 1, 3
    pixels = torch.randn(4, 3, 16, 16, generator=g)
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        got, _ = CLIPContrastive().loss(ours, {"pixel_values": pixels, "input_ids": ids})
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
