"""`ptm index build|search`: build a dense passage index of a corpus on FAISS, and query it. Thin layer over
ptmkit.recipes.index."""

from __future__ import annotations

import json

from ptmkit.cli.options import add_precision_option
from ptmkit.cli.formatting import Defaults
from ptmkit.data.corpus import TXT_MODES
from ptmkit.retrieval import ChunkConfig, EncoderConfig, IndexConfig
from ptmkit.retrieval.faiss_index import KINDS, STORAGES


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build a dense passage index of a corpus (FAISS) and search it",
                       description="Build a dense passage index of a corpus on FAISS, and search it.")
    actions = p.add_subparsers(dest="index_action", metavar="ACTION")
    actions.required = True
    fmt = Defaults

    b = actions.add_parser(
        "build", help="chunk a corpus into passages, embed them and write an index directory", formatter_class=fmt,
        description="Cut CORPUS into overlapping token windows (passages), embed each with a dense encoder (mean "
                    "pooling, unit vectors) and add them to a FAISS index; write DIR atomically with the passages "
                    "and a manifest fingerprinting the encoder and the corpus. An interrupted build leaves DIR as it "
                    "was.")
    b.add_argument("corpus", metavar="CORPUS",
                   help="a .txt or .jsonl file (plain or .gz), a directory or a glob of them; .txt: one document a "
                        "non-blank line (see --documents), .jsonl: one document a record (see --text-field)")
    b.add_argument("--out", required=True, metavar="DIR", help="the index directory to write (replaced if it exists)")
    b.add_argument("--encoder", default=None, metavar="MODEL",
                   help="encoder model directory (ptmkit or Hugging Face layout); default: all-MiniLM-L6-v2 from its "
                        "registry package")
    b.add_argument("--kind", choices=KINDS, default="flat",
                   help="flat: exact search; ivf: inverted file (k-means cells, search --nprobe of them); hnsw: graph "
                        "search")
    b.add_argument("--storage", choices=STORAGES, default="fp32",
                   help="how vectors are stored: fp32, fp16 (half the memory), pq (product quantisation codes)")
    b.add_argument("--nlist", type=int, default=256, help="ivf: number of k-means cells")
    b.add_argument("--nprobe", type=int, default=16, help="ivf: cells searched per query (recorded; search can override)")
    b.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    b.add_argument("--ef-search", type=int, default=64, help="hnsw: candidate list size at search time")
    b.add_argument("--pq-m", type=int, default=16, help="pq: sub-vectors per vector (must divide the vector size)")
    b.add_argument("--pq-bits", type=int, default=8, help="pq: bits per sub-vector code")
    b.add_argument("--max-tokens", type=int, default=128, help="tokens per passage")
    b.add_argument("--overlap", type=int, default=32, help="tokens shared by consecutive passages of a document")
    b.add_argument("--documents", choices=TXT_MODES, default="lines",
                   help=".txt files: each non-blank line is a document (lines) or each file is one (file)")
    b.add_argument("--text-field", default="text", help=".jsonl files: the field holding a document's text")
    b.add_argument("--max-length", type=int, default=None,
                   help="encoder input tokens per passage, specials included (default: 256, or the model's positions "
                        "if fewer)")
    b.add_argument("--batch-size", type=int, default=64, help="passages embedded per forward pass")
    add_precision_option(b, what="the encoder's autocast precision", choices=("auto", "fp32", "bf16"))
    b.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, cuda:N or auto")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    s = actions.add_parser("search", help="print the passages an index returns for queries", formatter_class=fmt,
                           description="Embed each query with the index's encoder and print its K best passages "
                                       "(rank, score = cosine, passage id, document id, text).")
    s.add_argument("index", metavar="DIR", help="an index directory written by `ptm index build`")
    s.add_argument("--query", action="append", default=[], metavar="TEXT", help="a query (repeat for several)")
    s.add_argument("--queries", default=None, metavar="FILE", help="a text file of queries, one a line (plain or .gz)")
    s.add_argument("--k", type=int, default=5, help="passages returned per query")
    s.add_argument("--encoder", default=None, metavar="MODEL",
                   help="query encoder directory; default: the one recorded in the index (it must have the same "
                        "weights: a different encoder is refused)")
    s.add_argument("--nprobe", type=int, default=None, help="ivf: cells searched per query (default: the index's)")
    s.add_argument("--ef-search", type=int, default=None, help="hnsw: candidate list size (default: the index's)")
    s.add_argument("--json", action="store_true", help="print one JSON object per query instead of a table")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.recipes.index import build_index, read_queries, search_index

    if args.index_action == "build":
        m = build_index(
            args.corpus, args.out, args.encoder,
            encoder_config=EncoderConfig(max_length=args.max_length, batch_size=args.batch_size,
                                         precision=args.precision, device=args.device),
            index=IndexConfig(kind=args.kind, storage=args.storage, nlist=args.nlist, nprobe=args.nprobe,
                              hnsw_m=args.hnsw_m, ef_search=args.ef_search, pq_m=args.pq_m, pq_bits=args.pq_bits),
            chunking=ChunkConfig(max_tokens=args.max_tokens, overlap=args.overlap, documents=args.documents,
                                 text_field=args.text_field),
            show_progress=not args.no_progress)
        print(f"indexed {m['passages']:,} passages of {m['corpus']['documents']:,} documents with "
              f"{m['index']['factory']} ({m['encoder']['dim']}-d) in {m['seconds']:.1f} s: wrote {args.out}")
        return 0
    queries = list(args.query) + (read_queries(args.queries) if args.queries else [])
    results = search_index(args.index, queries, args.k, args.encoder, args.nprobe, args.ef_search)
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        print(f"query: {r['query']}")
        for h in r["hits"]:
            print(f"  {h['rank']:>3}  {h['score']:.4f}  id {h['id']}  doc {h['doc']}  {' '.join(h['text'].split())}")
    return 0
