"""Tests for ptmkit.data.sampler: packing in each boundary mode, torch collation, and the seeded
resumable sampler (an interrupted-and-resumed run must yield exactly the uninterrupted order).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.data.sampler import PackedDataset, StatefulSampler, collate
from ptmkit.data.shards import TokenShards, prepare_shards
from ptmkit.data.tokenizer import Tokenizer

from .conftest import TEXTS, write_jsonl

T = 16


@pytest.fixture()
def shards(tmp_path: Path, small_bpe: Tokenizer) -> TokenShards:
    # documents of very different lengths (2 .. ~60 tokens), over several shards
    docs = [" ".join(TEXTS[i % 5].split()[: 1 + (i * 7) % 13]) * (1 + i % 3) for i in range(40)]
    write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    prepare_shards(tmp_path / "c.jsonl", small_bpe, tmp_path / "out", shard_tokens=150, progress=False)
    return TokenShards(tmp_path / "out", small_bpe)


def _doc_of(sh: TokenShards, pos: np.ndarray) -> np.ndarray:
    return np.searchsorted(sh.doc_offsets, pos, side="right") - 1


def test_cross_cuts_the_stream(shards: TokenShards) -> None:
    ds = PackedDataset(shards, T, "cross")
    stream = shards.tokens(0, shards.num_tokens)
    assert len(ds) == shards.num_tokens // T and len(shards._arrays) > 1
    b = ds.get_batch(np.arange(len(ds)))
    np.testing.assert_array_equal(b["input_ids"], stream[: len(ds) * T].reshape(-1, T))
    assert b["attention_mask"].all() and set(b) == {"input_ids", "attention_mask"}


def test_no_cross_never_spans_documents(shards: TokenShards, small_bpe: Tokenizer) -> None:
    ds = PackedDataset(shards, T, "no_cross")
    b = ds.get_batch(np.arange(len(ds)))
    ids, mask = b["input_ids"], b["attention_mask"].astype(bool)
    # every row's real tokens come from one document, contiguously, starting at the row's start
    for row in range(len(ds)):
        s, n = ds.starts[row], int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert len(set(_doc_of(shards, np.arange(s, s + n)))) == 1
        np.testing.assert_array_equal(ids[row, :n], shards.tokens(s, s + n))
    assert (ids[~mask] == small_bpe.pad_id).all()
    # all tokens covered exactly once, in order
    np.testing.assert_array_equal(ids[mask], shards.tokens(0, shards.num_tokens))
    assert 0 < ds.padding_fraction < 1
    lengths = shards.doc_lengths
    assert len(ds) == int(np.sum(-(-lengths // T)))


def test_mask_mode_document_and_position_ids(shards: TokenShards) -> None:
    ds = PackedDataset(shards, T, "mask")
    b = ds.get_batch(np.arange(len(ds)))
    np.testing.assert_array_equal(b["input_ids"], PackedDataset(shards, T).get_batch(np.arange(len(ds)))["input_ids"])
    doc = _doc_of(shards, ds.starts[:, None] + np.arange(T))  # (B, T) global document of each token
    np.testing.assert_array_equal(b["document_ids"], doc - doc[:, :1])  # documents have >= 1 token: consecutive
    same = b["document_ids"][:, :, None] == b["document_ids"][:, None, :]
    np.testing.assert_array_equal(same, doc[:, :, None] == doc[:, None, :])
    # positions restart at 0 where a new document begins inside the row
    starts_here = np.isin(ds.starts[:, None] + np.arange(T), shards.doc_offsets)
    pos = b["position_ids"]
    assert (pos[:, 0] == 0).all() and (pos[:, 1:][starts_here[:, 1:]] == 0).all()
    assert ((np.diff(pos, axis=1) == 1) | starts_here[:, 1:]).all()
    assert b["document_ids"].max() > 0  # the fixture really packs several documents per row


def test_collate_and_dataloader(shards: TokenShards) -> None:
    ds = PackedDataset(shards, T, "mask")
    batch = collate(ds.get_batch([3, 1]))
    assert set(batch) == {"input_ids", "attention_mask", "document_ids", "position_ids"}
    assert all(v.dtype == torch.int64 and v.shape == (2, T) for v in batch.values())
    items = collate([ds[3], ds[1]])
    assert all(torch.equal(items[k], batch[k]) for k in batch)
    sampler = StatefulSampler(len(ds), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate)
    first = next(iter(loader))
    np.testing.assert_array_equal(first["input_ids"].numpy(), ds.get_batch(sampler.epoch_indices(0)[:4])["input_ids"])


def test_dataset_errors(shards: TokenShards) -> None:
    with pytest.raises(ConfigError, match="boundary"):
        PackedDataset(shards, T, "document")
    with pytest.raises(ValueError, match="shorter seq_len"):
        PackedDataset(shards, shards.num_tokens + 1)
    with pytest.raises(IndexError):
        PackedDataset(shards, T).get_batch([10**6])


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    a, b = StatefulSampler(100, seed=3), StatefulSampler(100, seed=3)
    ea = list(a.batches(8, epochs=2))
    assert [x.tolist() for x in ea] == [x.tolist() for x in b.batches(8, epochs=2)]
    e0, e1 = np.concatenate(ea[:13]), np.concatenate(ea[13:])
    assert sorted(e0) == sorted(e1) == list(range(100)) and e0.tolist() != e1.tolist()
    assert StatefulSampler(100, seed=4).epoch_indices(0).tolist() != e0.tolist()
    assert StatefulSampler(10, shuffle=False).epoch_indices(5).tolist() == list(range(10))
    assert [len(x) for x in StatefulSampler(10).batches(4, drop_last=True)] == [4, 4]
    assert a.epoch == 2 and a.position == 0


@pytest.mark.parametrize("k", [0, 5, 12, 13, 20])
def test_sampler_exact_resume(k: int) -> None:
    full = StatefulSampler(100, seed=7)
    reference = [x.tolist() for x in itertools.islice(full.batches(8, epochs=None), 30)]
    run = StatefulSampler(100, seed=7)
    it = run.batches(8, epochs=None)
    consumed = [next(it).tolist() for _ in range(k)]
    state = run.state_dict()
    resumed = StatefulSampler(100, seed=7)
    resumed.load_state_dict(state)
    rest = [x.tolist() for x in itertools.islice(resumed.batches(8, epochs=None), 30 - k)]
    assert consumed + rest == reference


def test_sampler_ranks_and_state_checks() -> None:
    ranks = [StatefulSampler(103, seed=0, rank=r, world_size=4) for r in range(4)]
    parts = [r.epoch_indices(0) for r in ranks]
    assert all(len(p) == 25 for p in parts) and len(set(np.concatenate(parts))) == 100
    with pytest.raises(ValueError, match="n=100 but this sampler has n=99"):
        StatefulSampler(99).load_state_dict(StatefulSampler(100).state_dict())
    with pytest.raises(ConfigError, match="rank"):
        StatefulSampler(10, rank=2, world_size=2)
