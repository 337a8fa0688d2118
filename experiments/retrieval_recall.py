"""Issue 17: retrieval quality — recall@1/5/20 of the dense passage index (all-MiniLM-L6-v2, mean pooling, FAISS) and
of BM25 on (question, passage) pairs built from the LAMA T-REx facts. Writes the "retrieval" block of
docs/knowledge.md.

Pairs: each fact (subject, relation, object) becomes a question, the relation's LAMA template with the subject filled
in and the object asked for ("Allan Peiper was born in ?"), whose gold passages are the fact's evidence sentences
(T-REx's Wikipedia sentences, the [MASK] filled with the object's surface form; read by ptmkit.data.kg.read_lama).
The corpus is every evidence sentence of the selected facts, deduplicated, one document a line. A question is
answered at k when any of its gold sentences is among the first k passages. Nothing is trained on these pairs.

    .venv/bin/python experiments/retrieval_recall.py                            # all 22,881 facts (~89k sentences)
    .venv/bin/python experiments/retrieval_recall.py --max-facts 300 --docs '' --out runs/retrieval_recall_smoke
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit.cli.options import add_precision_option  # noqa: E402
from ptmkit.nn.autocast import resolve  # noqa: E402
from ptmkit import atomic  # noqa: E402
from ptmkit.analysis.knowledge import templates  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.data.kg import read_lama  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.recipes.index import load_encoder  # noqa: E402
from ptmkit.retrieval import BM25, BM25Config, ChunkConfig, EncoderConfig, IndexConfig, PassageIndex  # noqa: E402


def question(template: str, subject: str) -> str:
    """'[X] was born in [Y] .' -> 'Allan Peiper was born in ?'."""
    return template.replace("[X]", subject).replace("[Y]", "?").removesuffix(" .").strip()


def build_pairs(lama: Path, max_facts: int | None, seed: int) -> tuple[list[str], list[str], list[set[int]], list[str],
                                                                     int]:
    """(questions, corpus sentences, gold sentence ids per question, relation per question, distinct sentences of
    all facts) of a seeded sample of the T-REx facts that have evidence."""
    kg, evidence = read_lama(lama, held_out=0.0)
    temps = templates(lama / "relations.jsonl")
    by_fact: dict[int, list[str]] = {}
    for ev in evidence:
        by_fact.setdefault(ev.triple, []).append(" ".join(ev.text.split()))  # one line each
    facts = sorted(by_fact)
    if max_facts is not None and max_facts < len(facts):
        facts = sorted(np.random.default_rng(seed).choice(facts, max_facts, replace=False).tolist())
    sentence_id: dict[str, int] = {}
    questions, gold, rels = [], [], []
    for i in facts:
        head, rel, _ = (int(x) for x in kg.triples[i])
        questions.append(question(temps[kg.relations[rel]], kg.labels[head]))
        rels.append(kg.relations[rel])
        gold.append({sentence_id.setdefault(s, len(sentence_id)) for s in by_fact[i]})
    return questions, list(sentence_id), gold, rels, len({s for ss in by_fact.values() for s in ss})


def recall(ranked_docs: np.ndarray, gold: list[set[int]], ks: list[int]) -> dict[int, float]:
    """Fraction of questions with a gold document among their first k (for each k)."""
    hit_rank = np.full(len(gold), np.inf)
    for q, (row, g) in enumerate(zip(ranked_docs, gold)):
        hits = [r for r, d in enumerate(row) if d in g]
        if hits:
            hit_rank[q] = hits[0]
    return {k: float((hit_rank < k).mean()) for k in ks}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="minilm", help="dense encoder (a name of experiments/_models.py or a directory)")
    p.add_argument("--max-facts", type=int, default=None, help="a seeded sample of this many facts (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--ks", default="1,5,20", help="recall cut-offs, comma-separated")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], default="flat", help="the dense index's FAISS structure")
    add_precision_option(p, what="the encoder's autocast", choices=("auto", "fp32", "bf16"))
    p.add_argument("--batch-size", type=int, default=128, help="texts embedded per forward pass")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b")
    p.add_argument("--out", default="runs/retrieval_recall", help="results folder (corpus, index, result.json)")
    p.add_argument("--docs", default=str(ROOT / "docs" / "knowledge.md"),
                   help="page whose 'retrieval' block is written ('' to skip: smoke runs)")
    args = p.parse_args(argv)
    args.precision = resolve(args.precision, "cpu")  # records and tables name what ran
    given = sys.argv[1:] if argv is None else argv
    ks = sorted(int(k) for k in args.ks.split(","))
    out = Path(args.out)

    questions, sentences, gold, rels, all_sentences = build_pairs(data_root() / "lama", args.max_facts, args.seed)
    corpus = out / "corpus.txt"
    atomic.write_text(corpus, "\n".join(sentences) + "\n")
    print(f"{len(questions):,} questions over {len(sentences):,} evidence sentences ({len(set(rels))} relations)")

    encoder = load_encoder(model_dir(args.encoder), EncoderConfig(precision=args.precision,
                                                                 batch_size=args.batch_size))
    t0 = time.perf_counter()
    index = PassageIndex.build(corpus, encoder, IndexConfig(kind=args.kind), ChunkConfig(max_tokens=128, overlap=32))
    index.save(out / "index")
    build_s = time.perf_counter() - t0
    doc_of = np.array([index.passage(i).doc for i in range(len(index))])
    kmax = min(max(ks), len(index))

    t0 = time.perf_counter()
    dense = index.search(questions, kmax)
    dense_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bm25 = BM25([index.passage(i).text for i in range(len(index))], BM25Config(k1=args.k1, b=args.b))
    bm25_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, bm25_ids = bm25.search(questions, kmax)
    bm25_s = time.perf_counter() - t0

    results = {"bm25": recall(doc_of[bm25_ids], gold, ks), "dense": recall(doc_of[dense.ids], gold, ks)}
    name = "all-MiniLM-L6-v2" if args.encoder == "minilm" else Path(encoder.source).name
    factory = index.manifest["index"]["factory"]
    head = "| retriever | " + " | ".join(f"recall@{k}" for k in ks) + " | queries/s |"
    rows = [f"| BM25 (Okapi, k1 = {args.k1:g}, b = {args.b:g}) | "
            + " | ".join(f"{results['bm25'][k] * 100:.1f}" for k in ks) + f" | {len(questions) / bm25_s:,.0f} |",
            f"| dense: {name}, mean pooling, FAISS `{factory}` | "
            + " | ".join(f"{results['dense'][k] * 100:.1f}" for k in ks) + f" | {len(questions) / dense_s:,.0f} |"]
    lines = [head, "|---|" + "---|" * (len(ks) + 1), *rows, "",
             f"{len(questions):,} LAMA T-REx facts ({len(set(rels))} relations"
             + (f", a seeded sample of {args.max_facts:,}" if args.max_facts else "") +
             f") as questions (\"{questions[0]}\"), over a corpus of their {len(sentences):,} distinct evidence "
             f"sentences ({len(index):,} passages of at most 128 tokens); recall@k in %: a gold sentence among the "
             f"first k. The dense queries/s include embedding the question ({args.precision}); the index was built in "
             f"{build_s / 60:.1f} min (embedding every passage), BM25's in {bm25_build_s:.1f} s. Measured "
             f"{date.today().isoformat()} with `python experiments/retrieval_recall.py"
             f"{' ' + shlex.join(given) if given else ''}`."]
    block = "\n".join(lines)
    print(block)
    print(f"estimated full run (all {all_sentences:,} sentences; embedding dominates): "
          f"{build_s * all_sentences / len(sentences) / 60:.1f} min at this run's rate", flush=True)
    if args.docs:
        write_results_block(args.docs, block, "Knowledge and memory", name="retrieval")
    summary = {"experiment": "retrieval_recall", "questions": len(questions), "sentences": len(sentences),
               "passages": len(index), "recall": {m: {str(k): round(v, 4) for k, v in r.items()}
                                                  for m, r in results.items()},
               "index_build_seconds": round(build_s, 1), "dense_search_seconds": round(dense_s, 2),
               "bm25_search_seconds": round(bm25_s, 2)}
    atomic.write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
