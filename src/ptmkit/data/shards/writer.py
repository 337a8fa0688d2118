"""Writing token shards: tokenise a corpus once (Rust batch encoding, or a pool of processes) into numbered
``shard_NNNNN.bin`` / ``.idx`` files plus meta.json, built in a temporary directory published whole by
ptmkit.atomic. The layout is described in ptmkit.data.shards."""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from ptmkit import atomic
from ptmkit.config import ConfigError, check_positive
from ptmkit.data.corpus import CorpusStats, iter_documents
from ptmkit.data.shards.format import FORMAT, META, VERSION, token_dtype
from ptmkit.data.tokenizer import Tokenizer

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

    with atomic.atomic_dir(out) as tmp:  # complete or absent: an old directory is replaced only at the end
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
