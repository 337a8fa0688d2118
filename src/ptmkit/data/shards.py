"""Token shards: tokenise a corpus once into memory-mapped .bin arrays + per-shard document indices.
Pre-training then reads fixed-length windows with zero tokenisation cost (nanoGPT/Megatron style).

Directory layout (written to a temporary directory, then renamed, so it is complete or absent)::

    meta.json            format, tokenizer fingerprint + vocab size, dtype, counts, shard list, throughput
    shard_00000.bin      raw token ids, uint16 when every id fits (vocab <= 65,536), else uint32
    shard_00000.idx      int64 document offsets into that shard: [0, end_0, end_1, ..., n_tokens]

A document never spans two shards: a shard is closed at the first document boundary at or after
``shard_tokens`` tokens, so one shard may exceed the target by up to one document.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing as mp
import os
import queue
import shutil
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from ptmkit.config import ConfigError, check_positive
from ptmkit.data.corpus import CorpusStats, iter_documents
from ptmkit.data.tokenizer import Tokenizer

FORMAT = "ptmkit-token-shards"
VERSION = 1
META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when all ids 0..vocab_size-1 fit in 16 bits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------------------------
# encoding (shared by the in-process path and pool workers)


def _encode_arrays(
    backend: tokenizers.Tokenizer, texts: list[str], eos_id: int | None, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch of documents -> (flat token array, per-document lengths), eos appended."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # Rust threads, GIL released
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    if eos_id is not None:
        # insert eos after each document: np.insert places value before each index, and the
        # indices (cumulative ends) refer to the array without insertions.
        flat = np.insert(flat, np.cumsum(lengths), dtype.type(eos_id))
        lengths = lengths + 1
    return flat, lengths


_worker_state: dict[str, Any] = {}


def _worker_init(tokenizer_json: str, eos_id: int | None, dtype: str) -> None:
    # One process per core does the parallelism; Rust threads inside each would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_state.update(backend=tokenizers.Tokenizer.from_str(tokenizer_json), eos_id=eos_id, dtype=np.dtype(dtype))


def _worker_encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    s = _worker_state
    return _encode_arrays(s["backend"], texts, s["eos_id"], s["dtype"])


# A batch also closes at this many characters, so a run of whole books cannot hold gigabytes of
# token lists at once (memory stays ~ a few hundred MB whatever batch_docs is).
BATCH_CHARS = 1 << 23


def _batched(items: Iterable[str], n: int, max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in items:
        batch.append(text)
        chars += len(text)
        if len(batch) >= n or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _prefetch(iterator: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run `iterator` in a background thread (file reading + JSON parsing overlap Rust encoding)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(entry: tuple[BaseException | None, Any]) -> bool:
        while not stop.is_set():  # never block forever once the consumer has gone
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as e:  # re-raised in the consumer, e.g. EmptyCorpusError
            put((e, None))

    t = threading.Thread(target=produce, name="ptmkit-corpus-reader", daemon=True)
    t.start()
    try:
        while True:
            err, item = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()


def _pool_encode(
    batches: Iterator[list[str]], backend: tokenizers.Tokenizer, eos_id: int | None, dtype: np.dtype, num_workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encode batches in `num_workers` processes, in order, with at most 2 batches in flight per worker.

    Uses "spawn" (forking after Rust threads started can deadlock), so scripts calling this need the
    usual ``if __name__ == "__main__":`` guard; a worker that cannot start raises BrokenProcessPool.
    """
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        num_workers, mp_context=ctx, initializer=_worker_init, initargs=(backend.to_str(), eos_id, dtype.str)
    ) as pool:
        pending: collections.deque = collections.deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_worker_encode, batch))
                if len(pending) >= 2 * num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


# ----------------------------------------------------------------------------------------------
# writing


class _ShardWriter:
    """Appends encoded batches to numbered shards, closing a shard at a document boundary."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._lengths: list[np.ndarray] = []
        self._tokens = 0

    def _name(self, ext: str) -> str:
        return f"shard_{len(self.shards):05d}.{ext}"

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        ends = np.cumsum(lengths)  # (D,) end of each document within `flat`
        doc0, tok0 = 0, 0
        while doc0 < len(lengths):
            if self._file is None:
                self._file = open(self.directory / self._name("bin"), "wb")
            # first document whose end brings this shard to >= shard_tokens closes the shard
            need = self.shard_tokens - self._tokens + tok0
            k = int(np.searchsorted(ends[doc0:], need, side="left")) + doc0
            last = min(k, len(lengths) - 1)
            tok1 = int(ends[last])
            flat[tok0:tok1].tofile(self._file)
            self._lengths.append(lengths[doc0 : last + 1])
            self._tokens += tok1 - tok0
            doc0, tok0 = last + 1, tok1
            if self._tokens >= self.shard_tokens:
                self._close()

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        offsets.tofile(self.directory / self._name("idx"))
        self.shards.append(
            {"file": self._name("bin"), "index": self._name("idx"), "tokens": int(offsets[-1]), "documents": len(lengths)}
        )
        self._lengths, self._tokens = [], 0

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


def prepare_shards(
    spec: Any,
    tokenizer: Tokenizer | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard_tokens: int = 1 << 28,
    batch_docs: int = 256,
    num_workers: int = 0,
    append_eos: bool = True,
    progress: bool = True,
    *,
    text_field: str = "text",
    txt_mode: str = "file",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenise the corpus `spec` into token shards under `out_dir`; returns the meta.json dict.

    Batches of ``batch_docs`` documents (fewer if they reach BATCH_CHARS characters) are encoded
    by the tokenizer's multithreaded Rust ``encode_batch`` (``num_workers=0``) or by a pool of
    ``num_workers`` processes. Special tokens are not added; ``append_eos`` appends the
    tokenizer's eos (or sep) id after each document. Bad corpus lines are counted in meta.json.
    The directory is built under a temporary name and renamed into place when complete.
    """
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    for name, value in (("shard_tokens", shard_tokens), ("batch_docs", batch_docs), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"prepare_shards: {name} must be an integer, got {value!r}")
    check_positive("prepare_shards", shard_tokens=shard_tokens, batch_docs=batch_docs)
    if num_workers < 0:
        raise ConfigError(f"prepare_shards: num_workers must be >= 0, got {num_workers}")
    eos_id = tok.eos_id if append_eos else None
    if append_eos and eos_id is None:
        raise ValueError(
            f"append_eos=True but the tokenizer has no eos/sep token ({tok!r}); "
            "use a tokenizer with one, or pass append_eos=False (--no-eos)"
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"output {out} already exists and is not empty; pass overwrite=True (--overwrite) or choose another --out")
    dtype = token_dtype(tok.vocab_size)
    stats = CorpusStats()
    docs = iter_documents(spec, text_field=text_field, txt_mode=txt_mode, stats=stats)  # raises on missing paths now

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = _ShardWriter(tmp, dtype, shard_tokens)
        batches = _batched(docs, batch_docs)
        if num_workers > 0:
            encoded = _pool_encode(batches, tok.backend, eos_id, dtype, num_workers)
        else:
            encoded = (_encode_arrays(tok.backend, b, eos_id, dtype) for b in _prefetch(batches))
        bar = _progress_bar(progress)
        n_docs = n_tokens = 0
        t0 = time.perf_counter()
        try:
            for flat, lengths in encoded:
                writer.add(flat, lengths)
                n_docs += len(lengths)
                n_tokens += len(flat)
                if bar is not None:
                    bar.update(len(lengths))
                    bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
        finally:
            encoded.close()  # on error: stop the reader thread / worker pool now, not at GC
            if bar is not None:
                bar.close()
        shards = writer.finish()
        seconds = time.perf_counter() - t0
        if n_tokens == 0:
            raise ValueError(f"corpus {spec} tokenised to 0 tokens ({n_docs} documents); check the tokenizer and text field")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": {
                "fingerprint": tok.fingerprint(),
                "vocab_size": tok.vocab_size,
                "special_tokens": tok.special_tokens,
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "bos_id": tok.bos_id,
            },
            "dtype": dtype.name,
            "append_eos": bool(append_eos),
            "source": {"spec": _spec_str(spec), "text_field": text_field, "txt_mode": txt_mode},
            "counts": {"documents": n_docs, "tokens": n_tokens, **_bad(stats)},
            "shards": shards,
            "throughput": {
                "seconds": round(seconds, 4),
                "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
                "docs_per_s": round(n_docs / max(seconds, 1e-9), 2),
                "num_workers": num_workers,
            },
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _bad(stats: CorpusStats) -> dict[str, Any]:
    d = stats.to_dict()
    return {"files": d["files"], "chars": d["chars"], "bad_lines": d["bad_lines"], "bad_line_examples": d["bad_line_examples"]}


def _spec_str(spec: Any) -> Any:
    return [os.fspath(s) for s in spec] if isinstance(spec, (list, tuple)) else os.fspath(spec)


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="doc", desc="tokenising", dynamic_ncols=True)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary directory to `out`, replacing an old one only at the end."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


# ----------------------------------------------------------------------------------------------
# reading


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
