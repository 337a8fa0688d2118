"""The dense encoder: the index side (encode) and the query side (embed) give the same unit vectors, in the texts'
order whatever the batching; the query side carries gradients into the model; bf16 stays close to fp32; the
fingerprint changes with the weights and the pooling, not with a reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models.pooling import hidden_states, pool
from ptmkit.retrieval.encoder import DenseEncoder, EncoderConfig

from .conftest import sentences


def test_encode_equals_embed_in_order_and_is_unit_length(encoder_dir):
    texts = sentences(23, seed=3)
    # fp32 pinned: "auto" is bf16 on a CPU with native bf16, and the reference below runs outside autocast
    # (test_bf16_is_close_to_fp32 covers bf16)
    enc = DenseEncoder.from_dir(encoder_dir, EncoderConfig(batch_size=4, precision="fp32"))
    z = enc.encode(texts)
    assert z.shape == (23, 64) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.stack([enc.embed([t])[0].numpy() for t in texts])
    np.testing.assert_allclose(z, one_by_one, atol=1e-5)  # length-sorted batches and padding change nothing
    # and it is the masked mean of the backbone's last states, normalised (Sentence-BERT)
    batch = enc._batch(enc.tokenizer.encode_batch(texts[:2]))
    ref = torch.nn.functional.normalize(pool(hidden_states(enc.model, batch), batch["attention_mask"], "mean"), dim=-1)
    np.testing.assert_allclose(z[:2], ref.detach().numpy(), atol=1e-5)


def test_the_query_side_trains(encoder_dir):
    enc = DenseEncoder.from_dir(encoder_dir)
    q = enc.embed(["river castle"], grad=True)
    d = torch.from_numpy(enc.encode(["river castle garden"]))  # the index side: a constant
    assert q.requires_grad and not d.requires_grad
    (q @ d.T).sum().backward()
    grads = [p.grad for p in enc.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert not enc.embed(["river"]).requires_grad  # grad=False by default


def test_bf16_is_close_to_fp32(encoder_dir):
    texts = sentences(8, seed=4)
    a = DenseEncoder.from_dir(encoder_dir).encode(texts)
    b = DenseEncoder.from_dir(encoder_dir, EncoderConfig(precision="bf16")).encode(texts)
    assert (a * b).sum(axis=1).min() > 0.99  # cosine of each pair


def test_fingerprint_follows_weights_and_pooling(encoder_dir):
    a, b = DenseEncoder.from_dir(encoder_dir), DenseEncoder.from_dir(encoder_dir)
    assert a.fingerprint() == b.fingerprint()
    assert DenseEncoder.from_dir(encoder_dir, EncoderConfig(pooling="cls")).fingerprint() != a.fingerprint()
    with torch.no_grad():
        next(b.model.parameters()).view(-1)[0] += 1e-3
    assert b.fingerprint() != a.fingerprint()


def test_bad_encoder_settings_are_errors(encoder_dir):
    with pytest.raises(ConfigError, match="exceeds the model's 128 positions"):
        DenseEncoder.from_dir(encoder_dir, EncoderConfig(max_length=512))
    with pytest.raises(ConfigError, match="precision"):
        EncoderConfig(precision="int8")
    with pytest.raises(ConfigError, match="no texts"):
        DenseEncoder.from_dir(encoder_dir).embed([])
