"""Benchmark: `prepare_shards` on the first N Gutenberg documents with GPT-2 BPE (read, encode, write),
against transformers' GPT2TokenizerFast encoding the same documents one by one (encode only).

Both sides load the same vocab.json/merges.txt from the data root ($PTMKIT_DATA, default
../shared/data). The reference gets the documents already in memory and writes nothing, so the
ratio understates our advantage on the tokenisation itself. The token counts must agree exactly.
Prints a human summary on stderr and, last, one JSON line on stdout:
{"benchmark": "prepare_corpus", "ours": ..., "reference": ..., "ratio": ..., "unit": "tokens/s"}
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ptmkit.data.paths import data_root
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100, help="number of documents from the start of the corpus (default 100)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side; the median is reported (default 3)")
    p.add_argument("--batch-docs", type=int, default=256, help="prepare_shards batch size in documents (default 256)")
    p.add_argument("--num-workers", type=int, default=0, help="prepare_shards worker processes (default 0: Rust threads)")
    p.add_argument("--data-root", type=Path, default=None, help="shared data root (default $PTMKIT_DATA or ../shared/data)")
    args = p.parse_args()

    root = args.data_root or data_root()
    corpus, gpt2_dir = root / "corpora" / "gutenberg.jsonl.gz", root / "tokenizers" / "gpt2"
    for path in (corpus, gpt2_dir):
        if not path.exists():
            print(f"prepare_corpus: {path} not found; set PTMKIT_DATA or --data-root", file=sys.stderr)
            return 2

    with gzip.open(corpus, "rb") as f:
        lines = list(itertools.islice(f, args.docs))
    docs = [json.loads(line)["text"] for line in lines]
    chars = sum(map(len, docs))

    tok = Tokenizer.load(gpt2_dir)
    from transformers import GPT2TokenizerFast  # reference only

    ref = GPT2TokenizerFast.from_pretrained(str(gpt2_dir), model_max_length=10**9)

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.jsonl.gz"
        with gzip.open(subset, "wb") as g:
            g.writelines(lines)

        def ours(run: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            meta = prepare_shards(
                subset, tok, Path(tmp) / f"shards{run}", batch_docs=args.batch_docs,
                num_workers=args.num_workers, progress=False,
            )
            return time.perf_counter() - t0, meta["counts"]["tokens"]

        def reference() -> tuple[float, int]:
            t0 = time.perf_counter()
            n = sum(len(ref.encode(d)) for d in docs)
            return time.perf_counter() - t0, n

        ours(-1), reference()  # warm-up: page cache, BPE word caches, lazy imports
        ours_runs, ref_runs = [], []
        for r in range(args.runs):  # interleaved, so drifting machine load hits both sides alike
            ours_runs.append(ours(r))
            ref_runs.append(reference())

    n_ours, n_ref = ours_runs[0][1], ref_runs[0][1]
    if n_ours != n_ref + len(docs):  # ours appends one <|endoftext|> per document
        print(f"prepare_corpus: token counts disagree: ours {n_ours} (incl. {len(docs)} eos) vs reference {n_ref}", file=sys.stderr)
        return 1
    ours_tps = statistics.median(n_ours / s for s, _ in ours_runs)
    ref_tps = statistics.median(n_ref / s for s, _ in ref_runs)
    print(
        f"{len(docs)} documents, {chars:,} chars, {n_ref:,} GPT-2 tokens; {os.cpu_count()} CPU cores\n"
        f"ours      prepare_shards (read .jsonl.gz + encode_batch + write shards): {ours_tps:,.0f} tokens/s "
        f"(runs: {', '.join(f'{s:.3f}s' for s, _ in ours_runs)})\n"
        f"reference transformers GPT2TokenizerFast.encode, one document at a time: {ref_tps:,.0f} tokens/s "
        f"(runs: {', '.join(f'{s:.3f}s' for s, _ in ref_runs)})",
        file=sys.stderr,
    )
    print(json.dumps({
        "benchmark": "prepare_corpus", "ours": round(ours_tps), "reference": round(ref_tps),
        "ratio": round(ours_tps / ref_tps, 2), "unit": "tokens/s",
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
