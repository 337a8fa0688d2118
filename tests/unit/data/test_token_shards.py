"""Tests for ptmkit.data.shards: exact token/boundary round trips, dtype choice, bad-line reporting,
atomic output, fingerprint refusal, corruption detection, and a slice of the real Gutenberg corpus.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import models, pre_tokenizers

from ptmkit.data.corpus import EmptyCorpusError
from ptmkit.data.shards import TokenShards, prepare_shards, token_dtype
from ptmkit.data.tokenizer import Tokenizer
from tests.conftest import shared_path

from .conftest import TEXTS, write_jsonl

DOCS = [f"Document {i}: " + " ".join(TEXTS[i % 5].split()[: 1 + i % 9]) for i in range(60)]


def _corpus(tmp_path: Path, docs: list[str] = DOCS) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in docs])


def test_round_trip_exact_tokens_and_boundaries(tmp_path: Path, small_bpe: Tokenizer) -> None:
    meta = prepare_shards(_corpus(tmp_path), small_bpe, tmp_path / "out", shard_tokens=200, batch_docs=7, progress=False)
    sh = TokenShards(tmp_path / "out", small_bpe)
    expected = [ids + [small_bpe.eos_id] for ids in small_bpe.encode_batch(DOCS, add_special_tokens=False)]
    assert sh.num_documents == meta["counts"]["documents"] == len(DOCS)
    assert sh.num_tokens == meta["counts"]["tokens"] == sum(map(len, expected))
    assert len(meta["shards"]) > 3 and all(s["tokens"] >= 200 for s in meta["shards"][:-1])
    assert [sh.document(i).tolist() for i in range(len(DOCS))] == expected
    np.testing.assert_array_equal(sh.doc_lengths, [len(e) for e in expected])
    stream = np.array(list(itertools.chain.from_iterable(expected)))
    np.testing.assert_array_equal(sh.tokens(0, sh.num_tokens), stream)  # spans every shard
    starts = np.array([0, 195, 199, 401, sh.num_tokens - 13])
    np.testing.assert_array_equal(sh.gather(starts, 13), stream[starts[:, None] + np.arange(13)])
    assert sh.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert meta["tokenizer"]["fingerprint"] == small_bpe.fingerprint()
    assert meta["throughput"]["tokens_per_s"] > 0 and meta["throughput"]["docs_per_s"] > 0
    assert not list(tmp_path.glob(".out.tmp-*"))  # the temporary directory was renamed


def test_no_eos_and_worker_pool_give_the_same_tokens(tmp_path: Path, small_bpe: Tokenizer) -> None:
    prepare_shards(_corpus(tmp_path), small_bpe, tmp_path / "a", append_eos=False, progress=False)
    prepare_shards(_corpus(tmp_path), small_bpe, tmp_path / "b", append_eos=False, num_workers=1, batch_docs=16, progress=False)
    a, b = TokenShards(tmp_path / "a"), TokenShards(tmp_path / "b")
    assert a.document(5).tolist() == small_bpe.encode(DOCS[5], add_special_tokens=False)
    np.testing.assert_array_equal(a.tokens(0, a.num_tokens), b.tokens(0, b.num_tokens))
    np.testing.assert_array_equal(a.doc_offsets, b.doc_offsets)


def test_dtype_uint16_or_uint32(tmp_path: Path) -> None:
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    vocab = {f"w{i}": i for i in range(70_000)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(backend, {"eos": "w69999", "unk": "w0"})
    write_jsonl(tmp_path / "c.jsonl", [{"text": "w1 w65535 w65536"}, {"text": "w68000"}])
    meta = prepare_shards(tmp_path / "c.jsonl", tok, tmp_path / "out", progress=False)
    sh = TokenShards(tmp_path / "out", tok)
    assert meta["dtype"] == "uint32" and sh.dtype == np.uint32
    assert sh.tokens(0, sh.num_tokens).tolist() == [1, 65535, 65536, 69999, 68000, 69999]


def test_bad_lines_are_reported_in_meta(tmp_path: Path, small_bpe: Tokenizer) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": "good"}, "{oops", {"txt": "x"}, {"text": "fine"}])
    meta = prepare_shards(f, small_bpe, tmp_path / "out", progress=False)
    assert meta["counts"]["documents"] == 2
    assert meta["counts"]["bad_lines"] == {"invalid_json": 1, "missing_field": 1}
    ex = meta["counts"]["bad_line_examples"]["invalid_json"][0]
    assert (ex["file"], ex["line"]) == (str(f), 2)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["counts"] == meta["counts"]


def test_empty_corpus_is_an_error_and_leaves_nothing(tmp_path: Path, small_bpe: Tokenizer) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", ["{bad", {"text": ""}])
    with pytest.raises(EmptyCorpusError, match=r"c\.jsonl has no documents"):
        prepare_shards(f, small_bpe, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        prepare_shards(tmp_path / "missing.jsonl", small_bpe, tmp_path / "out", progress=False)


def test_existing_output_needs_overwrite(tmp_path: Path, small_bpe: Tokenizer) -> None:
    f = _corpus(tmp_path)
    prepare_shards(f, small_bpe, tmp_path / "out", progress=False, append_eos=False)
    with pytest.raises(ValueError, match="--overwrite"):
        prepare_shards(f, small_bpe, tmp_path / "out", progress=False)
    prepare_shards(f, small_bpe, tmp_path / "out", progress=False, overwrite=True)
    assert TokenShards(tmp_path / "out").meta["append_eos"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "out"]


def test_fingerprint_mismatch_is_refused(tmp_path: Path, small_bpe: Tokenizer) -> None:
    prepare_shards(_corpus(tmp_path), small_bpe, tmp_path / "out", progress=False)
    other = Tokenizer.train(TEXTS, "bpe", 290)
    with pytest.raises(ValueError, match=r"(?i)prepared with tokenizer .* re-run `ptm data prepare"):
        TokenShards(tmp_path / "out", other)
    # Same tokenizer after a save/load round trip is accepted
    small_bpe.save(tmp_path / "tok")
    TokenShards(tmp_path / "out", Tokenizer.load(tmp_path / "tok"))


def test_corruption_is_detected(tmp_path: Path, small_bpe: Tokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        TokenShards(tmp_path)
    prepare_shards(_corpus(tmp_path), small_bpe, tmp_path / "out", progress=False)
    shard = tmp_path / "out" / "shard_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"shard_00000\.bin has .* bytes .* truncated or corrupt"):
        TokenShards(tmp_path / "out")


def test_append_eos_needs_an_eos_token(tmp_path: Path) -> None:
    backend = tokenizers.Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="no eos/sep token"):
        prepare_shards(_corpus(tmp_path), Tokenizer(backend, {}), tmp_path / "out", progress=False)


def test_gutenberg_slice_matches_transformers(tmp_path: Path, gpt2_dir: Path, gpt2: Tokenizer) -> None:
    src = shared_path("corpora", "gutenberg.jsonl.gz")
    with gzip.open(src, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"][:10_000] for line in itertools.islice(f, 3)]
    write_jsonl(tmp_path / "g.jsonl", [{"id": i, "text": d} for i, d in enumerate(docs)])
    prepare_shards(tmp_path / "g.jsonl", gpt2_dir, tmp_path / "out", progress=False)
    sh = TokenShards(tmp_path / "out", gpt2)
    ref = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_dir), model_max_length=10**9)
    for i, d in enumerate(docs):
        assert sh.document(i).tolist() == ref(d)["input_ids"] + [50256]
