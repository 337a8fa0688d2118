"""kNN-LM: the kNN distribution is a distribution and its target slice equals the full scatter; λ = 0 gives the base
LM's perplexity exactly (the same windows, the same sums) and λ = 1 the kNN's; a planted datastore entry makes its
rare token the most likely next token; a store's bytes per entry are counted on disk and 1M entries of SmolLM2's
width fit in 2 GiB; a store from another LM, a damaged store and a k beyond it are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptmkit.analysis.lm_eval import causal_perplexity
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.recipes.knn_lm import build_datastore, eval_tokens, knn_lm_perplexity
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.knn_lm import Datastore, interpolate, knn_log_probs, knn_target_log_prob

from .conftest import sentences

GIB = 2 ** 30


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(model, tokenizer, train text file, test text file): a random 2-layer LLaMA of width 32."""
    d = tmp_path_factory.mktemp("knnlm")
    (d / "train.txt").write_text("\n".join(sentences(60, seed=5)) + "\n")
    (d / "test.txt").write_text("\n".join(sentences(25, seed=6)) + "\n")
    tok = Tokenizer.train(d / "train.txt", "bpe", vocab_size=300, min_frequency=1)
    cfg = make_config("llama", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                                    num_kv_heads=2, intermediate_size=64, max_position_embeddings=128))
    torch.manual_seed(0)
    save_model(build_model("llama", cfg, "causal-lm"), d / "model")
    tok.save(d / "model")
    return load_model(d / "model").eval(), tok, d / "train.txt", d / "test.txt"


def test_the_knn_distribution_sums_to_one_and_its_target_slice_matches():
    torch.manual_seed(0)
    dists = torch.rand(6, 5) * 4
    values = torch.randint(0, 7, (6, 5))
    values[2, 3], dists[2, 3] = -1, float("inf")  # a slot the search could not fill
    full = knn_log_probs(dists, values, 7, temperature=2.0)  # (N, V)
    torch.testing.assert_close(full.logsumexp(-1), torch.zeros(6), atol=1e-6, rtol=0)
    w = torch.softmax(-dists / 2.0, dim=-1)
    for v in range(7):  # a Python reference for one query
        want = float(w[2][values[2] == v].sum())
        assert math.isclose(full[2, v].exp().item(), want, abs_tol=1e-6)
    target = torch.randint(0, 7, (6,))
    torch.testing.assert_close(knn_target_log_prob(dists, values, target, 2.0), full.gather(1, target[:, None])[:, 0])


def test_interpolation_endpoints_are_exact():
    lm, knn = torch.randn(4, 9).log_softmax(-1), torch.randn(4, 9).log_softmax(-1)
    knn[0, 3] = float("-inf")  # a token no neighbour holds
    assert torch.equal(interpolate(lm, knn, 0.0), lm)
    assert torch.equal(interpolate(lm, knn, 1.0), knn)
    torch.testing.assert_close(interpolate(lm, knn, 0.3), (0.3 * knn.exp() + 0.7 * lm.exp()).log())
    with pytest.raises(ConfigError, match="λ must be in"):
        interpolate(lm, knn, 1.5)


def test_lambda_zero_is_the_base_lm_exactly(lm, tmp_path):
    model, tok, train, test = lm
    store = build_datastore(model, tok, train, tmp_path / "store", window=32, stride=16, show_progress=False)
    assert len(store) == len(eval_tokens(train, tok)) - 1  # one entry per scored token
    ids = eval_tokens(test, tok)
    base = causal_perplexity(model, ids, 32, 16, show_progress=False)
    loaded = Datastore.load(tmp_path / "store")
    r = knn_lm_perplexity(model, tok, ids, loaded, ks=(1, 8), lambdas=(0.0, 0.25, 1.0), temperatures=(1.0, 10.0),
                          window=32, stride=16, show_progress=False)
    assert r["tokens"] == base["tokens"] and r["base"]["perplexity"] == base["perplexity"]
    zero = [g for g in r["grid"] if g["lambda"] == 0.0]
    assert len(zero) == 4 and all(g["perplexity"] == base["perplexity"] for g in zero)  # equal, not approximately
    assert all(g["perplexity"] != base["perplexity"] for g in r["grid"] if g["lambda"] == 0.25)
    assert len(r["grid"]) == 12 and r["best"]["nll"] == min(g["nll"] for g in r["grid"])


def test_a_planted_entry_makes_its_rare_token_the_most_likely(lm):
    model, tok, train, _ = lm
    store = build_datastore(model, tok, train, None, window=32, stride=16, show_progress=False)
    context = torch.tensor([tok.encode("quiet loud bright dark gentle", add_special_tokens=False)])
    with torch.no_grad():
        out = model(context)
    hidden, logits = out.last_hidden_state[0, -1:], out.logits[0, -1:]  # (1, H), (1, V)
    rare = int(logits.argmin())  # the token the LM finds least likely here
    n = len(store)
    keys = np.concatenate([store.index.reconstruct_n(0, n), hidden.numpy()])
    planted = Datastore.from_arrays(keys, np.append(store.values, rare), IndexConfig(kind="flat", storage="fp16",
                                                                                       metric="l2"))
    before = store.next_token_log_probs(hidden, logits, k=8, lam=1.0)
    after = planted.next_token_log_probs(hidden, logits, k=8, lam=1.0)
    assert int(before.argmax()) != rare and int(after.argmax()) == rare
    half = planted.next_token_log_probs(hidden, logits, k=8, lam=0.5)  # eq. 3: the mixture, still normalised
    torch.testing.assert_close(half.exp(), 0.5 * after.exp() + 0.5 * logits.float().softmax(-1))
    torch.testing.assert_close(half.logsumexp(-1), torch.zeros(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg, per_entry", [
    (IndexConfig(kind="flat", storage="fp16", metric="l2"), 2 * 576 + 4),  # fp16 key + int32 value
    (IndexConfig(kind="ivf", nlist=16, storage="fp16", metric="l2"), 2 * 576 + 8 + 4),  # + the inverted list's id
    (IndexConfig(kind="ivf", nlist=16, storage="pq", pq_m=64, pq_bits=8, metric="l2"), 64 + 8 + 4),
], ids=["flat-fp16", "ivf-fp16", "ivf-pq64"])
def test_bytes_per_entry_counted_on_disk_and_a_million_entries_fit_in_2_gib(cfg, per_entry, tmp_path):
    rng = np.random.default_rng(0)
    sizes = {}
    for n in (1500, 3000):
        keys = rng.standard_normal((n, 576)).astype(np.float16)
        ds = Datastore.build([(keys, rng.integers(0, 49152, n))], 576, tmp_path / str(n), cfg, show_progress=False)
        sizes[n] = sum(f.stat().st_size for f in (tmp_path / str(n)).iterdir() if f.name != "manifest.json")
        assert ds.manifest["bytes_per_entry"] == round(sizes[n] / n, 2)
    marginal = (sizes[3000] - sizes[1500]) / 1500  # what one more entry costs on disk
    assert marginal == per_entry == ds.entry_bytes()
    fixed = sizes[3000] - 3000 * marginal  # headers, codebooks, centroids
    assert fixed + 1_000_000 * marginal <= 2 * GIB  # the issue's target at SmolLM2's width (576)
    assert abs(ds.bytes_per_entry() - sizes[3000] / 3000) < 1  # the in-memory count agrees with the disk
    assert abs(ds.storage_bytes(1_000_000) - (fixed + 1_000_000 * marginal)) < 3000  # and so does the projection


def test_a_foreign_or_damaged_store_and_a_k_beyond_it_are_refused(lm, tmp_path):
    model, tok, train, test = lm
    build_datastore(model, tok, train, tmp_path / "s", window=32, stride=16, show_progress=False)
    store = Datastore.load(tmp_path / "s")
    ids = eval_tokens(test, tok)[:40]
    with pytest.raises(ConfigError, match=r"k must be in 1\.\."):
        knn_lm_perplexity(model, tok, ids, store, ks=(len(store) + 1,), window=32, stride=16, show_progress=False)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0  # another LM: its hidden states are other keys
    try:
        with pytest.raises(ConfigError, match="rebuild the datastore with this model"):
            knn_lm_perplexity(model, tok, ids, store, ks=(4,), window=32, stride=16, show_progress=False)
    finally:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] -= 1.0
    with open(tmp_path / "s" / "values.npy", "r+b") as f:
        f.truncate(64)
    with pytest.raises(ConfigError, match="truncated or corrupt; rebuild the datastore"):
        Datastore.load(tmp_path / "s")
