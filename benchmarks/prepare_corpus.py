"""Benchmark: `prepare_shards` on the first N Gutenberg documents with GPT-2 BPE (read, encode, write), against
transformers' GPT2TokenizerFast encoding the same documents in the same batches (encode only).

Like for like: both sides encode batches of --batch-docs documents through the batched API of their library, and
both run on the same Rust thread pool of the `tokenizers` library in this one process (all cores by default;
--threads 1 runs both on one thread). The reference gets the documents already in memory and writes nothing, so
the headline ratio understates our advantage on the tokenisation itself. A second, labelled line times ptmkit's
`Tokenizer.encode_batch` on the same in-memory batches (encode only on both sides). The token ids must agree
exactly. Candidates alternate order every run; min / median / max are printed, ratios use medians.
Prints a human summary on stderr and, last, one JSON line on stdout:
{"benchmark": "prepare_corpus", "ours": ..., "reference": ..., "ratio": ..., "unit": "tokens/s", ...}

    .venv/bin/python benchmarks/prepare_corpus.py                 # 100 documents, 3 runs per side
    .venv/bin/python benchmarks/prepare_corpus.py --threads 1     # both sides on one thread
    .venv/bin/python benchmarks/prepare_corpus.py --docs 2 --runs 1   # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.data.shards import prepare_shards  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402


def limit_threads(n: int | None) -> None:
    """Size the tokenizers library's Rust thread pool (shared by both sides). Takes effect only before the first
    parallel encode of the process, which is why main() calls it first."""
    if n is None:
        return
    os.environ["RAYON_NUM_THREADS"] = str(n)
    if n == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # encode_batch then runs in the calling thread


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100, help="number of documents from the start of the corpus (default 100)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side; min/median/max reported (default 3)")
    p.add_argument("--batch-docs", type=int, default=256, help="documents per encode batch, both sides (default 256)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="prepare_shards worker processes (default 0: Rust threads; > 0 is not like for like)")
    p.add_argument("--threads", type=int, default=None,
                   help="Rust threads of the tokenizers library, both sides (default: all cores)")
    p.add_argument("--data-root", type=Path, default=None, help="shared data root (default $PTMKIT_DATA or ../shared/data)")
    args = p.parse_args(argv)
    limit_threads(args.threads)

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
    # the batches prepare_shards makes (it also cuts a batch at 8 Mi characters, far above these documents)
    batches = [docs[i:i + args.batch_docs] for i in range(0, len(docs), args.batch_docs)]

    tok = Tokenizer.load(gpt2_dir)
    from transformers import GPT2TokenizerFast  # reference only

    ref = GPT2TokenizerFast.from_pretrained(str(gpt2_dir), model_max_length=10**9)

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.jsonl.gz"
        with gzip.open(subset, "wb") as g:
            g.writelines(lines)
        runs = itertools.count()

        def ours() -> int:
            meta = prepare_shards(subset, tok, Path(tmp) / f"shards{next(runs)}", batch_docs=args.batch_docs,
                                  num_workers=args.num_workers, progress=False)
            return meta["counts"]["tokens"]

        def ours_encode() -> list[list[int]]:
            return [ids for b in batches for ids in tok.encode_batch(b, add_special_tokens=False)]

        def reference() -> list[list[int]]:
            return [ids for b in batches for ids in ref(b, add_special_tokens=False)["input_ids"]]

        # warm-up: page cache, BPE word caches, the Rust thread pool, lazy imports
        timed = alternate({"ours": ours, "ours_encode": ours_encode, "reference": reference}, args.runs, warmup=1)

    report_failures(timed.failures)
    if "ours" in timed.failures or "reference" in timed.failures:
        print(json.dumps({"benchmark": "prepare_corpus", "ours": None, "reference": None, "ratio": None,
                          "unit": "tokens/s", "failures": timed.failures}))
        return 1
    ref_ids = timed.results["reference"]
    n_ref = sum(map(len, ref_ids))
    n_ours = timed.results["ours"]
    if n_ours != n_ref + len(docs):  # ours appends one <|endoftext|> per document
        print(f"prepare_corpus: token counts disagree: ours {n_ours} (incl. {len(docs)} eos) vs reference {n_ref}",
              file=sys.stderr)
        return 1
    if "ours_encode" in timed.results and timed.results["ours_encode"] != ref_ids:
        print("prepare_corpus: ptmkit's encode_batch and the reference produced different token ids", file=sys.stderr)
        return 1
    s = timed.summaries
    ours_tps, ref_tps = n_ours / s["ours"].median, n_ref / s["reference"].median
    threads = args.threads or f"all {os.cpu_count()} cores"
    print(
        f"{len(docs)} documents, {chars:,} chars, {n_ref:,} GPT-2 tokens; {os.cpu_count()} CPU cores; "
        f"tokenizers Rust threads: {threads}; batches of {args.batch_docs} documents\n"
        f"ours      prepare_shards (read .jsonl.gz + encode_batch + write shards): {ours_tps:,.0f} tokens/s "
        f"[{s['ours'].format('s')}]\n"
        f"reference transformers GPT2TokenizerFast(batch), encode only: {ref_tps:,.0f} tokens/s "
        f"[{s['reference'].format('s')}]\n"
        f"headline ratio (ours end to end / reference encode only): {ours_tps / ref_tps:.2f}",
        file=sys.stderr,
    )
    result = {"benchmark": "prepare_corpus", "ours": round(ours_tps), "reference": round(ref_tps),
              "ratio": round(ours_tps / ref_tps, 2), "unit": "tokens/s", "docs": len(docs),
              "batch_docs": args.batch_docs, "threads": args.threads, "num_workers": args.num_workers,
              "seconds": {k: v.as_dict(scale=1.0) for k, v in s.items()}, "failures": timed.failures}
    if "ours_encode" in s:
        enc_tps = n_ref / s["ours_encode"].median
        result["encode_only"] = {"ours": round(enc_tps), "reference": round(ref_tps),
                                 "ratio": round(enc_tps / ref_tps, 2)}
        print(f"encode only, both in memory: ptmkit Tokenizer.encode_batch {enc_tps:,.0f} tokens/s "
              f"[{s['ours_encode'].format('s')}], ratio {enc_tps / ref_tps:.2f}", file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 1 if timed.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
