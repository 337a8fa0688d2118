"""The VQ-VAE image tokenizer (models/vqvae.py, nn/vector_quantize.py, objectives/vqvae.py): straight-through
gradients, EMA codebook means, dead-code restarts, codes that round-trip, and a loss that falls on real emoji."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.data.images import decode_image
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.nn.vector_quantize import EMAVectorQuantizer
from ptmkit.objectives.vqvae import VQVAEObjective
from tests.conftest import shared_path

TINY = dict(image_size=16, num_downsamples=2, hidden_size=32, residual_hidden_size=16, codebook_size=32,
            embedding_dim=16)


def _vqvae(**over):
    return build_model("vqvae", make_config("vqvae", {**TINY, **over}), "image-reconstruction")


def test_straight_through_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = _vqvae().eval()  # eval: the codebook stays put, so the forward value is exactly the codes' vectors
    out = model(torch.randn(2, 3, 16, 16))
    out.reconstruction.square().mean().backward()  # no commitment term: only the straight-through path
    first = model.encoder.down[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    q, _ = model.quantize(torch.randn(2, 3, 16, 16))
    assert_close(q.quantized, model.quantizer.lookup(q.codes))  # forward: the nearest codes


def test_ema_moves_each_code_to_the_mean_of_its_vectors():
    q = EMAVectorQuantizer(2, 2, decay=0.5, epsilon=1e-8, dead_threshold=0.0).train()
    q.embedding.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    q.embedding_sum.copy_(q.embedding)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [4.0, 6.0], [6.0, 6.0]])
    for _ in range(30):
        q(z)
    assert_close(q.embedding, torch.tensor([[2 / 3, 2 / 3], [5.0, 6.0]]), atol=1e-4, rtol=0)
    assert_close(q.cluster_size, torch.tensor([3.0, 2.0]), atol=1e-4, rtol=0)
    before = q.embedding.clone()
    q.eval()(z + 10)  # eval mode reads the codebook only
    assert torch.equal(q.embedding, before)


def test_dead_codes_restart_at_input_vectors_reproducibly():
    def run():
        q = EMAVectorQuantizer(8, 4, decay=0.99, dead_threshold=1.0).train()
        torch.manual_seed(0)
        q.embedding.copy_(torch.randn(8, 4) + 100)  # every code far from the data
        q.embedding[0] = 0
        q.embedding_sum.copy_(q.embedding)
        z = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
        out = q(z)
        return q, z, out

    q, z, out = run()
    assert out.restarts == 7  # all but code 0 got no vector: restarted, the codebook initialised from the data
    restarted = q.embedding[1:]
    assert all((z == row).all(1).any() for row in restarted), "each restarted code is one of the batch's vectors"
    assert_close(q.cluster_size[1:], torch.ones(7))
    assert torch.equal(run()[0].embedding, q.embedding)  # seeded by the update count: the same restarts again
    assert q(z).perplexity > 1.5  # the next batch spreads over the restarted codes


def test_codes_round_trip_and_survive_save_load(tmp_path):
    torch.manual_seed(0)
    model = _vqvae().eval()
    x = torch.randn(3, 3, 16, 16)
    codes = model.encode(x)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    assert_close(model.decode(codes), model(x).reconstruction)  # decode(encode(x)) is the forward pass
    vectors = model.quantizer.lookup(codes).reshape(-1, TINY["embedding_dim"])
    assert torch.equal(model.quantizer.nearest(vectors).view(3, 4, 4), codes)  # a code's vector maps back to it
    save_model(model, tmp_path / "vq")
    back = load_model(tmp_path / "vq").eval()
    assert torch.equal(back.encode(x), codes)
    pixels = model.to_pixels(model.normalise(torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)))
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 16, 16, 3)


def test_loss_falls_and_reconstruction_improves_on_emoji():
    src = shared_path("multimodal", "emoji", "images")
    files = sorted(src.glob("*.png"))[::150][:8]
    images = torch.from_numpy(np.stack([decode_image(f, 16) for f in files]))  # (8, 16, 16, 3) uint8
    torch.manual_seed(0)
    model = _vqvae(codebook_size=64)
    x = model.normalise(images)
    objective = VQVAEObjective()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        loss, metrics = objective.loss(model, {"pixel_values": x})
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append(metrics)
    first, last = history[0], history[-1]
    assert last["loss"] < 0.3 * first["loss"], (first, last)
    assert last["psnr"] > first["psnr"] + 5, (first["psnr"], last["psnr"])


def test_a_grid_that_does_not_halve_is_refused():
    with pytest.raises(ConfigError, match="not divisible by 2\\^num_downsamples"):
        make_config("vqvae", dict(image_size=20, num_downsamples=3))
