"""The passage index: a planted passage comes back first under every index kind and storage; save/load round-trips
the search; and each bad input is an error naming the fix — another query encoder, another corpus version, k beyond
the index, a truncated or unreadable index file — while an interrupted build or save (an exception, or SIGKILL)
leaves the previous index in place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptmkit.config import ConfigError
from ptmkit.retrieval import faiss_index
from ptmkit.retrieval.encoder import DenseEncoder, EncoderConfig
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.passage_index import PassageIndex
from ptmkit.retrieval.passages import ChunkConfig

from .conftest import PLANTED

CHUNK = ChunkConfig(max_tokens=16, overlap=4)


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return DenseEncoder.from_dir(encoder_dir)


@pytest.fixture(scope="module")
def built(encoder, corpus, tmp_path_factory):
    """A flat index saved to a directory: (index, directory)."""
    idx = PassageIndex.build(corpus, encoder, IndexConfig(), CHUNK, show_progress=False)
    out = tmp_path_factory.mktemp("ix") / "index"
    idx.save(out)
    return idx, out


def planted_id(idx: PassageIndex) -> int:
    return next(i for i in range(len(idx)) if idx.passage(i).text == PLANTED)


@pytest.mark.parametrize("cfg", [
    IndexConfig(), IndexConfig(storage="fp16"), IndexConfig(storage="pq", pq_m=32, pq_bits=8),
    IndexConfig(kind="ivf", nlist=8, nprobe=8), IndexConfig(kind="ivf", nlist=8, nprobe=2, storage="fp16"),
    IndexConfig(kind="ivf", nlist=8, nprobe=8, storage="pq", pq_m=32, pq_bits=8),
    # HNSW's candidate list covers the 301 passages: the random tiny encoder's unit vectors all lie close together,
    # where a greedy graph walk with 64 candidates missed the planted one on an AVX2 CPU once (another rounding of the
    # same vectors, another graph); this test is about the plumbing of every kind, not HNSW's recall
    IndexConfig(kind="hnsw", hnsw_m=8, ef_search=320), IndexConfig(kind="hnsw", hnsw_m=8, storage="fp16", ef_search=320),
], ids=lambda c: c.factory(64))
def test_a_planted_passage_is_retrieved_first(encoder, corpus, cfg):
    idx = PassageIndex.build(corpus, encoder, cfg, CHUNK, show_progress=False)
    hits = idx.search([PLANTED, "zebra xylophone umbrellas"], k=3)
    assert hits.ids.shape == (2, 3) and hits.ids[0, 0] == planted_id(idx)
    assert idx.passages(hits.ids)[0][0].text == PLANTED and idx.passages(hits.ids)[0][0].doc == 150
    assert (np.diff(hits.scores, axis=1) <= 1e-6).all()  # best first


def test_save_load_round_trip_and_manifest(built, encoder, corpus):
    idx, out = built
    again = PassageIndex.load(out, encoder)
    queries = [PLANTED, "river castle", "winter music soldier"]
    a, b = idx.search(queries, k=4), again.search(queries, k=4)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores)
    m = json.loads((out / "manifest.json").read_text())
    assert m["encoder"]["fingerprint"] == encoder.fingerprint() and m["passages"] == len(idx)
    assert m["corpus"]["documents"] == 301 and m["index"]["factory"] == "Flat"
    assert m["rebuild"].startswith("ptm index build") and set(m["files"]) == {"index.faiss", "passages.jsonl"}
    assert PassageIndex.load(out).encoder.fingerprint() == encoder.fingerprint()  # the recorded encoder loads
    pid = planted_id(again)
    np.testing.assert_allclose(again.vectors([pid])[0], encoder.encode([PLANTED])[0], atol=1e-6)


def test_another_query_encoder_is_refused(built, encoder_dir):
    _, out = built
    with pytest.raises(ConfigError, match="fingerprint.*Query with the encoder the index was built with"):
        PassageIndex.load(out, DenseEncoder.from_dir(encoder_dir, EncoderConfig(pooling="cls")))


def test_another_corpus_version_is_refused(encoder, corpus, tmp_path):
    mine = tmp_path / "corpus.txt"
    shutil.copyfile(corpus, mine)
    PassageIndex.build(mine, encoder, IndexConfig(), CHUNK, show_progress=False).save(tmp_path / "ix")
    with open(mine, "a") as f:
        f.write("a new document appended later\n")
    with pytest.raises(ConfigError, match="another version of the corpus.*rebuild the index: ptm index build"):
        PassageIndex.load(tmp_path / "ix", encoder)
    assert len(PassageIndex.load(tmp_path / "ix", encoder, check_corpus=False)) > 0  # deliberately stale: allowed


def test_k_beyond_the_index_and_empty_inputs_are_refused(built, encoder, tmp_path):
    idx, _ = built
    with pytest.raises(ConfigError, match=f"holds {len(idx)} passages; ask for k <= {len(idx)}"):
        idx.search([PLANTED], k=len(idx) + 1)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="at least one passage"):
        PassageIndex.build(tmp_path / "empty.txt", encoder, show_progress=False)
    with pytest.raises(ConfigError, match="not an index directory"):
        PassageIndex.load(tmp_path / "nowhere", encoder)


def test_a_truncated_or_unreadable_index_file_is_refused(built, encoder, tmp_path):
    _, out = built
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    with open(bad / "index.faiss", "r+b") as f:
        f.truncate(os.path.getsize(bad / "index.faiss") // 2)
    with pytest.raises(ConfigError, match="truncated or corrupt; rebuild the index"):
        PassageIndex.load(bad, encoder)
    # garbage that the manifest vouches for (written by someone else): FAISS itself refuses it, and so do we
    (bad / "index.faiss").write_bytes(b"not a faiss index" * 10)
    m = json.loads((bad / "manifest.json").read_text())
    from ptmkit.retrieval.manifest import file_records

    m["files"] = file_records(bad, ("index.faiss", "passages.jsonl"))
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="FAISS cannot read it"):
        PassageIndex.load(bad, encoder)


def test_an_interrupted_build_or_save_leaves_the_old_index(built, encoder, corpus, monkeypatch):
    idx, out = built
    before = sorted(p.name for p in out.parent.iterdir())

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PassageIndex.build(corpus, encoder, IndexConfig(add_batch=50), CHUNK, show_progress=False, on_batch=stop)

    def half_then_fail(index, path):
        path.write_bytes(b"\0" * 100)  # a torn write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_index, "write", half_then_fail)
    with pytest.raises(OSError):
        idx.save(out)
    assert sorted(p.name for p in out.parent.iterdir()) == before  # no temporary left behind
    assert PassageIndex.load(out, encoder).search([PLANTED], k=1).ids[0, 0] == planted_id(idx)


def test_a_killed_save_leaves_no_index_in_place(encoder_dir, corpus, built, tmp_path):
    _, old = built
    out = tmp_path / "index"
    shutil.copytree(old, out)  # a previous index at the destination
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from ptmkit.retrieval import DenseEncoder, IndexConfig, PassageIndex, faiss_index
        from ptmkit.retrieval.passages import ChunkConfig
        idx = PassageIndex.build({str(corpus)!r}, DenseEncoder.from_dir({str(encoder_dir)!r}), IndexConfig(),
                                 ChunkConfig(max_tokens=8, overlap=0), show_progress=False)
        def die(index, path):
            Path(path).write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        faiss_index.write = die
        idx.save({str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["index"]
    assert len(PassageIndex.load(out)) == len(PassageIndex.load(old))  # the old index, intact


def test_refresh_re_embeds_with_a_new_encoder(built, encoder_dir, tmp_path):
    idx, _ = built
    new = DenseEncoder.from_dir(encoder_dir, EncoderConfig(pooling="cls"))
    fresh = idx.refresh(new, show_progress=False)
    assert fresh.manifest["encoder"]["fingerprint"] == new.fingerprint() != idx.manifest["encoder"]["fingerprint"]
    np.testing.assert_allclose(fresh.vectors(np.arange(3)), new.encode([idx.passage(i).text for i in range(3)]),
                               atol=1e-6)
    fresh.save(tmp_path / "ix")
    assert PassageIndex.load(tmp_path / "ix", new).search([PLANTED], 1).ids[0, 0] == planted_id(idx)


def test_an_index_of_passages_in_memory_saves_and_loads(encoder, encoder_dir, tmp_path):
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.retrieval.passages import chunk_documents

    docs = ["river castle garden", PLANTED, "winter music soldier letter"]
    passages = list(chunk_documents(docs, Tokenizer.load(encoder_dir), CHUNK))
    idx = PassageIndex.from_passages(passages, encoder, IndexConfig(storage="fp16"), show_progress=False)
    assert idx.manifest["corpus"]["path"] is None and idx.manifest["corpus"]["documents"] == 3
    idx.save(tmp_path / "ix")
    again = PassageIndex.load(tmp_path / "ix", encoder)
    assert again.search([PLANTED], k=1).ids[0, 0] == 1 and "from_passages" in again.manifest["rebuild"]
    with pytest.raises(ConfigError, match="ids must be 0..N-1"):
        PassageIndex.from_passages(passages[1:], encoder, show_progress=False)
