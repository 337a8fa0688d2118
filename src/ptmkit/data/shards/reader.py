"""Reading token shards: a read-only, memory-mapped view of a prepared shard directory as one token stream, with
every file checked against meta.json (format, sizes, document offsets) before use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptmkit.data.shards.format import FORMAT, META, VERSION

if TYPE_CHECKING:  # the reader needs only numpy; a tokenizer is passed in to be checked
    from ptmkit.data.tokenizer import Tokenizer


class TokenShards:
    """Read-only, memory-mapped view of a prepared shard directory as one token stream.

    ``doc_offsets`` (int64, D+1) are global token offsets of document boundaries, so document i is
    ``tokens(doc_offsets[i], doc_offsets[i+1])``; ``gather(starts, length)`` reads many windows.
    """

    def __init__(self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> None:
        self.directory = d = Path(directory)
        meta_path = d / META
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: {d} is not a prepared token-shard directory; create one with "
                "`ptm data prepare --input SPEC --tokenizer DIR --out DIR`"
            )
        try:
            self.meta = meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}:{e.lineno}: invalid JSON ({e.msg}); re-run `ptm data prepare`") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')} is not {FORMAT!r} v{VERSION}; "
                "re-run `ptm data prepare` with this ptmkit version"
            )
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        self.dtype = np.dtype(meta["dtype"])
        self._arrays: list[np.ndarray] = []
        offsets = []
        shard_lengths = []
        for s in meta["shards"]:
            n = int(s["tokens"])
            path = d / s["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} listed in {meta_path} is missing; re-run `ptm data prepare`")
            size = path.stat().st_size
            if size != n * self.dtype.itemsize:
                raise ValueError(
                    f"{path} has {size} bytes but {meta_path} records {n} {self.dtype.name} tokens "
                    f"({n * self.dtype.itemsize} bytes): the shard is truncated or corrupt; re-run `ptm data prepare`"
                )
            self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype))
            idx_path = d / s["index"]
            if not idx_path.is_file():
                raise FileNotFoundError(f"{idx_path} listed in {meta_path} is missing; re-run `ptm data prepare`")
            idx = np.fromfile(idx_path, dtype=np.int64)
            if len(idx) != int(s["documents"]) + 1 or idx[0] != 0 or idx[-1] != n or np.any(np.diff(idx) < 0):
                raise ValueError(
                    f"{idx_path} is inconsistent with {meta_path} (expected {s['documents']} + 1 nondecreasing "
                    f"offsets from 0 to {n}); re-run `ptm data prepare`"
                )
            offsets.append(idx[:-1])
            shard_lengths.append(n)
        # (S+1,) global start of each shard; (D+1,) global document boundaries
        self.shard_starts = np.zeros(len(shard_lengths) + 1, dtype=np.int64)
        np.cumsum(shard_lengths, out=self.shard_starts[1:])
        starts = [o + self.shard_starts[i] for i, o in enumerate(offsets)]
        self.doc_offsets = np.concatenate([*starts, self.shard_starts[-1:]]).astype(np.int64, copy=False)

    # -- metadata -------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int | None:
        return self.meta["tokenizer"].get("eos_id")

    @property
    def pad_id(self) -> int | None:
        return self.meta["tokenizer"].get("pad_id")

    @property
    def num_tokens(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def __len__(self) -> int:
        return self.num_documents

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_offsets)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Refuse a tokenizer whose fingerprint differs from the one the shards were made with."""
        want, got = self.meta["tokenizer"]["fingerprint"], tokenizer.fingerprint()
        if want != got:
            raise ValueError(
                f"token shards in {self.directory} were prepared with tokenizer {want[:12]}… "
                f"(vocab {self.meta['tokenizer']['vocab_size']}) but the tokenizer given is {got[:12]}… "
                f"(vocab {tokenizer.vocab_size}); the same ids would mean different tokens. Re-run "
                f"`ptm data prepare --tokenizer <this tokenizer> --out {self.directory} --overwrite`, "
                "or use the tokenizer the shards were prepared with."
            )

    # -- reading --------------------------------------------------------------------------------

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the global stream (a view when inside one shard)."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
        s0 = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        s1 = int(np.searchsorted(self.shard_starts, max(stop - 1, start), side="right")) - 1
        if s0 == s1 or start == stop:
            base = self.shard_starts[s0]
            return self._arrays[s0][start - base : stop - base]
        parts = []
        for s in range(s0, s1 + 1):
            lo, hi = max(start, self.shard_starts[s]), min(stop, self.shard_starts[s + 1])
            parts.append(self._arrays[s][lo - self.shard_starts[s] : hi - self.shard_starts[s]])
        return np.concatenate(parts)

    def document(self, i: int) -> np.ndarray:
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range for {self.num_documents} documents")
        i %= self.num_documents
        return self.tokens(int(self.doc_offsets[i]), int(self.doc_offsets[i + 1]))

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(N, length) tokens from windows starting at `starts`; windows may cross shard boundaries."""
        starts = np.asarray(starts, dtype=np.int64)
        return self.take(starts[:, None] + np.arange(length, dtype=np.int64))  # (N, L) global positions

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at arbitrary global `positions` (any shape), vectorised over shards."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.num_tokens):
            bad = pos.min() if pos.min() < 0 else pos.max()
            raise IndexError(f"token position {bad} outside [0, {self.num_tokens})")
        if len(self._arrays) == 1:
            return np.asarray(self._arrays[0][pos])
        shard = np.searchsorted(self.shard_starts, pos, side="right") - 1  # same shape as pos
        out = np.empty(pos.shape, dtype=self.dtype)
        for s in np.unique(shard):  # loop over the shards touched, not over tokens
            m = shard == s
            out[m] = self._arrays[s][pos[m] - self.shard_starts[s]]
        return out

    def __repr__(self) -> str:
        return (
            f"TokenShards({str(self.directory)!r}, documents={self.num_documents:,}, tokens={self.num_tokens:,}, "
            f"shards={len(self._arrays)}, dtype={self.dtype.name})"
        )
