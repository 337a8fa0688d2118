"""Probing: CoNLL-U reading (multi-word tokens, empty nodes, gzip, bad lines), a probe on a planted feature reaches
100% (and a control task does not), first-sub-token features per layer with a cache, control labels per word type."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from ptmkit.analysis.probing import (ProbeConfig, control_labels, layer_curve, probe_accuracy, train_probe, train_probes,
                                     word_features)
from ptmkit.config import ConfigError
from ptmkit.data.conllu import read_conllu
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config

CONLLU = """# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t0:root\t_
4.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = 2
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t0:root\t_
2\tthere\tthere\tADV\tRB\t_\t1\tadvmod:tmod\t1:advmod\t_
"""


def test_read_conllu_plain_gzip_and_bad_lines(tmp_path):
    (tmp_path / "a.conllu").write_text(CONLLU)
    with gzip.open(tmp_path / "a.conllu.gz", "wt") as f:
        f.write(CONLLU)
    for name in ("a.conllu", "a.conllu.gz"):
        s = read_conllu(tmp_path / name)
        assert [x.words for x in s] == [["I", "do", "n't", "know", "."], ["Hello", "there"]]
        assert s[0].upos == ["PRON", "AUX", "PART", "VERB", "PUNCT"] and s[0].heads == [3, 4, 4, 0, 4]
        assert s[1].deprels == ["root", "advmod"]  # subtypes dropped
    (tmp_path / "bad.conllu").write_text(CONLLU.replace("1\tHello\thello", "1\tHello"))
    with pytest.raises(ValueError, match="bad.conllu:12.*10 tab-separated"):
        read_conllu(tmp_path / "bad.conllu")
    with pytest.warns(UserWarning, match="left out 1"):
        assert len(read_conllu(tmp_path / "bad.conllu", skip_bad_lines=True)) == 1


def test_a_probe_finds_a_planted_feature_and_the_control_task_does_not():
    g = np.random.default_rng(0)
    y = g.integers(0, 4, 600)
    x = g.normal(size=(600, 16)).astype(np.float32)
    x[:, 3] = 10 * y + 0.1 * x[:, 3]  # the label, planted in one coordinate
    cfg = ProbeConfig(lr=5e-2)
    probe = train_probe(x[:400], y[:400], 4, cfg)
    assert probe_accuracy(probe, x[400:], y[400:]) == 1.0
    noise = np.stack([g.normal(size=(600, 16)).astype(np.float32)] * 2)  # two "layers" of pure noise
    curve = layer_curve(noise[:, :400], y[:400], noise[:, 400:], y[400:], 4, cfg)
    assert all(r["accuracy"] < 0.45 for r in curve)  # chance is 0.25


def test_probes_trained_together_are_independent_and_each_reads_its_own_layer():
    g = np.random.default_rng(1)
    y = g.integers(0, 3, 500)
    other = g.integers(0, 3, 500)
    feats = g.normal(size=(2, 500, 8)).astype(np.float16)
    feats[0, :, 2] = 5 * y  # layer 0 holds the label, layer 1 is noise
    for kind in ("linear", "mlp"):
        cfg = ProbeConfig(kind=kind, hidden=16, lr=5e-2)
        a = train_probes(feats[:, :400], [y[:400], other[:400]], 3, cfg)
        acc = a.accuracy(feats[:, 400:], [y[400:], other[400:]])  # (layers, label sets)
        assert acc.shape == (2, 2) and acc[0, 0] == 1.0 and acc[1, 0] < 0.5 and acc[0, 1] < 0.5
        # the first label set's probes come out the same whatever the second set is: no shared weights or gradients
        b = train_probes(feats[:, :400], [y[:400], y[:400]], 3, cfg)
        for wa, wb in zip(a.weights, b.weights):
            assert torch.equal(wa[:, 0], wb[:, 0]) and not torch.equal(wa[:, 1], wb[:, 1])
    curve = layer_curve(feats[:, :400], y[:400], feats[:, 400:], y[400:], 3, ProbeConfig(lr=5e-2), other[:400],
                        other[400:], transfer=(feats[:, 400:], y[400:]))
    assert curve[0]["accuracy"] == curve[0]["transfer_accuracy"] == 1.0 and curve[0]["selectivity"] > 0.4
    with pytest.raises(ConfigError, match="labels for"):
        train_probes(feats, [y[:10]], 3, ProbeConfig())


def test_control_labels_are_one_label_per_word_type():
    words = ["The", "cat", "the", "dog", "cat", "a"]
    labels = np.array([0, 1, 0, 1, 1, 0])
    c = control_labels(words, labels, seed=3)
    assert c[0] == c[2] and c[1] == c[4] and set(c) <= {0, 1}
    assert np.array_equal(c, control_labels(words, labels, seed=3))


def test_word_features_take_each_words_first_piece_per_layer_and_cache(tmp_path):
    texts = ["the cats sat on mats", "unbelievable things happened"]
    tok = Tokenizer.train(texts * 20, "wordpiece", vocab_size=70, min_frequency=1)
    model = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                         num_heads=2, intermediate_size=64,
                                                         max_position_embeddings=32))).eval()
    sents = [t.split() for t in texts]
    f = word_features(model, tok, sents, cache=tmp_path)
    assert f.shape == (3, sum(len(s) for s in sents), 32) and f.dtype == np.float16
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = word_features(model, tok, sents, cache=tmp_path)
    assert np.array_equal(f, again)
    enc_first = tok.encode("the", add_special_tokens=True)  # [CLS] the [SEP]: 'the' at position 1
    with torch.no_grad():
        h = model(torch.tensor([tok.encode(texts[0])]), output_hidden_states=True).hidden_states
    assert np.allclose(f[2, 0], h[2][0, 1].numpy(), atol=1e-2)  # layer 2, word 0 = token 1
    assert len(enc_first) == 3
    with pytest.raises(ConfigError, match="kind"):
        ProbeConfig(kind="svm")


def test_word_features_batched_by_length_come_back_in_sentence_order():
    texts = ["the cats sat on mats and then the cats sat on more mats", "cats", "unbelievable things happened",
             "the mats sat", "on"]
    tok = Tokenizer.train(texts * 20, "wordpiece", vocab_size=70, min_frequency=1)
    model = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                         num_heads=2, intermediate_size=64,
                                                         max_position_embeddings=32))).eval()
    sents = [t.split() for t in texts]
    together = word_features(model, tok, sents, batch_size=2)  # length order: batches mix sentences 1, 4, 3, 2, 0
    alone = np.concatenate([word_features(model, tok, [s], batch_size=1) for s in sents], axis=1)
    assert together.shape == alone.shape
    np.testing.assert_allclose(together.astype(np.float32), alone.astype(np.float32), atol=2e-3)
