"""Dense retrieval throughput: ptmkit (DenseEncoder + PassageIndex on FAISS) against sentence-transformers + FAISS
doing the same work — all-MiniLM-L6-v2 from its registry package directory (loaded by both), mean pooling, unit
vectors, 256 tokens at most, the same batch size, fp32 on CPU, an exact inner-product index (IndexFlatIP).

    index build     embed N passages (the chunks of WikiText-2 valid) and add them to the index
    batched search  embed Q queries (the first words of WikiText-2 test lines) and take each one's top k

Both sides get the same passage texts (ptmkit's chunking runs once, outside the clock). Rounds alternate who goes
first (benchmarks/_timing.py); the house JSON line's ratio = reference median seconds / ptmkit median seconds (> 1:
ptmkit faster), for the build ("ratio") and the search ("search.ratio"), with the share of top-k ids both agree on.

    .venv/bin/python benchmarks/retrieval.py
    .venv/bin/python benchmarks/retrieval.py --passages 200 --queries 64 --rounds 1      # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.data import textio  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.retrieval import (ChunkConfig, DenseEncoder, EncoderConfig, IndexConfig, PassageIndex,  # noqa: E402
                              default_encoder_dir, read_passages)


def main(argv=None) -> dict:
    import faiss
    from sentence_transformers import SentenceTransformer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="encoder directory (default: all-MiniLM-L6-v2's package)")
    p.add_argument("--passages", type=int, default=2000, help="passages indexed (chunks of WikiText-2 valid)")
    p.add_argument("--queries", type=int, default=512, help="queries searched (WikiText-2 test lines, first words)")
    p.add_argument("--query-words", type=int, default=12, help="words per query")
    p.add_argument("--k", type=int, default=10, help="passages returned per query")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass, both sides")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per passage (chunking)")
    p.add_argument("--rounds", type=int, default=3, help="timed repeats of each (alternating)")
    args = p.parse_args(argv)
    model = Path(args.model) if args.model else default_encoder_dir()
    root = data_root() / "corpora" / "wikitext-2"

    ours = DenseEncoder.from_dir(model, EncoderConfig(max_length=256, batch_size=args.batch_size))
    passages, _ = read_passages(root / "valid.txt", ours.tokenizer, ChunkConfig(max_tokens=args.max_tokens, overlap=32))
    passages = passages[:args.passages]
    texts = [x.text for x in passages]
    lines = [line.split() for line in textio.lines(root / "test.txt") if len(line.split()) >= args.query_words]
    queries = [" ".join(words[:args.query_words]) for words in lines[:args.queries]]
    st = SentenceTransformer(str(model), device="cpu")
    st.max_seq_length = 256
    built: dict = {}

    def ours_build():
        built["ours"] = PassageIndex.from_passages(passages, ours, IndexConfig(kind="flat"), show_progress=False)

    def ref_build():
        index = faiss.IndexFlatIP(ours.dim)
        index.add(st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True))
        built["reference"] = index

    timed_build = alternate({"ptmkit": ours_build, "reference": ref_build}, args.rounds, warmup=1)
    report_failures(timed_build.failures, "index build")

    def ours_search():
        return built["ours"].search(queries, args.k).ids

    def ref_search():
        q = st.encode(queries, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
        return built["reference"].search(q, args.k)[1]

    timed_search = alternate({"ptmkit": ours_search, "reference": ref_search}, args.rounds, warmup=1)
    report_failures(timed_search.failures, "search")
    a, b = timed_search.results["ptmkit"], timed_search.results["reference"]
    agree = float(np.mean([len(set(x) & set(y)) / args.k for x, y in zip(a, b)]))

    bo, br = timed_build.summaries["ptmkit"], timed_build.summaries["reference"]
    so, sr = timed_search.summaries["ptmkit"], timed_search.summaries["reference"]
    summary = {"benchmark": "retrieval", "unit": "passages/s", "model": model.parent.name if model.name == "model"
               else model.name, "against": "sentence-transformers + faiss.IndexFlatIP",
               "passages": len(texts), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
               "ours": round(len(texts) / bo.median, 1), "reference": round(len(texts) / br.median, 1),
               "ratio": round(br.median / bo.median, 3),
               "search": {"unit": "queries/s", "queries": len(queries), "k": args.k,
                          "ours": round(len(queries) / so.median, 1), "reference": round(len(queries) / sr.median, 1),
                          "ratio": round(sr.median / so.median, 3), "top_k_agreement": round(agree, 4)},
               "ours_s": bo.as_dict(scale=1, digits=3), "reference_s": br.as_dict(scale=1, digits=3)}
    print(f"index build: ptmkit {bo.format('s')}, reference {br.format('s')} for {len(texts):,} passages: ratio "
          f"{summary['ratio']}; search: ptmkit {so.format('s')}, reference {sr.format('s')} for {len(queries):,} "
          f"queries: ratio {summary['search']['ratio']}; top-{args.k} agreement {agree:.3f}", flush=True)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
