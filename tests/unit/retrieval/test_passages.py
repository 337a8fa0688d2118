"""Chunking: windows cover every token with the configured overlap, a passage's text is the exact slice of its
document, documents keep their ids; .txt (lines or file), .jsonl and .gz read alike; bad configs and empty corpora are
errors that say what to do."""

from __future__ import annotations

import gzip
import json

import pytest

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.retrieval.passages import ChunkConfig, chunk_documents, read_passages, token_windows


@pytest.mark.parametrize("n, size, overlap", [(1, 4, 0), (4, 4, 1), (5, 4, 1), (10, 4, 2), (23, 8, 3), (100, 16, 0)])
def test_windows_cover_every_token_and_overlap_as_configured(n, size, overlap):
    ws = token_windows(n, size, overlap)
    assert ws[0][0] == 0 and ws[-1][1] == n
    assert all(e - s <= size for s, e in ws)
    covered = sorted({t for s, e in ws for t in range(s, e)})
    assert covered == list(range(n))
    for (s0, e0), (s1, _) in zip(ws, ws[1:]):
        assert s1 == s0 + size - overlap and e0 - s1 == overlap  # consecutive windows share `overlap` tokens


def test_passages_are_exact_slices_of_their_documents(encoder_dir):
    tok = Tokenizer.load(encoder_dir)
    docs = ["river mountain castle garden winter summer music letter village doctor", "  ocean forest  ", "quiet"]
    ps = list(chunk_documents(docs, tok, ChunkConfig(max_tokens=4, overlap=1)))
    assert [p.id for p in ps] == list(range(len(ps)))
    assert [p.doc for p in ps] == [0, 0, 0, 1, 2]  # 10 words: windows 0-4, 3-7, 6-10; then one each
    for p in ps:
        assert p.text == docs[p.doc][p.char_start:p.char_end] and p.text == p.text.strip()
    assert ps[0].text == "river mountain castle garden" and ps[1].text == "garden winter summer music"
    assert (ps[3].text, ps[3].char_start) == ("ocean forest", 2)


def test_txt_jsonl_and_gzip_corpora_read_alike(encoder_dir, tmp_path):
    tok = Tokenizer.load(encoder_dir)
    docs = ["river mountain castle", "ocean forest silver golden", "quiet loud"]
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n")  # blank lines are separators, not documents
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"id": f"d{i}", "body": d}) + "\n" for i, d in enumerate(docs)))
    a, sa = read_passages(tmp_path / "c.txt", tok, ChunkConfig(max_tokens=3, overlap=0))
    b, _ = read_passages(tmp_path / "c.jsonl.gz", tok, ChunkConfig(max_tokens=3, overlap=0, text_field="body"))
    assert a == b and sa.documents == 3 and [p.doc for p in a] == [0, 1, 1, 2]
    one, _ = read_passages(tmp_path / "c.txt", tok, ChunkConfig(max_tokens=64, overlap=0, documents="file"))
    assert len(one) == 1 and one[0].doc == 0  # documents="file": the whole file is one document


def test_bad_chunking_and_empty_corpora_are_errors(encoder_dir, tmp_path):
    with pytest.raises(ConfigError, match="overlap must be in"):
        ChunkConfig(max_tokens=4, overlap=4)
    with pytest.raises(ConfigError, match="documents="):
        ChunkConfig(documents="paragraphs")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ConfigError, match="at least one passage"):
        read_passages(tmp_path / "empty.txt", Tokenizer.load(encoder_dir))
