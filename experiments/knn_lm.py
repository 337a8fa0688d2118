"""Issue 17: kNN-LM (Khandelwal et al. 2020) — SmolLM2-135M's WikiText-2 test perplexity with and without a datastore
of (context hidden state -> next token) pairs, λ, k and the softmax temperature swept from one search per batch.
Writes the "knn-lm" block of docs/knowledge.md.

The shared data holds WikiText-2 valid and test but not train, so the in-domain datastore is built from WikiText-2
valid (disjoint from test; 275k SmolLM2 tokens); --datastore-corpus takes any other text (e.g. a Gutenberg slice).
The best (k, T, λ) of the grid is chosen on the test text itself, so it is optimistic; the paper's setting (k = 1024,
λ = 0.25, T = 1) is reported beside it untuned.

    .venv/bin/python experiments/knn_lm.py                                  # the full run
    .venv/bin/python experiments/knn_lm.py --max-datastore-tokens 6000 --max-eval-tokens 1500 --docs '' \\
        --out runs/knn_lm_smoke      # a smoke run (~1 CPU-minute) that prints the full run's estimated time
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit.cli.options import add_precision_option  # noqa: E402
from ptmkit.analysis.lm_eval import text_tokens, windows  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.config import ConfigError  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.recipes.evaluate import load_adapted  # noqa: E402
from ptmkit.recipes.knn_lm import build_datastore, eval_tokens, knn_lm_perplexity, lm_fingerprint  # noqa: E402
from ptmkit.retrieval.faiss_index import IndexConfig, training_rows  # noqa: E402
from ptmkit.retrieval.knn_lm import Datastore  # noqa: E402
from ptmkit.retrieval.passage_index import corpus_record  # noqa: E402
from ptmkit.train.precision import Precision  # noqa: E402

PAPER = {"k": 1024, "temperature": 1.0, "lambda": 0.25}  # Khandelwal et al. 2020 §3 (WikiText-103, in-domain)


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def reusable(path: Path, want: dict) -> Datastore | None:
    """The store at `path` if it was built from the same LM, corpus, tokens, windows and index config."""
    try:
        store = Datastore.load(path)
    except ConfigError:
        return None
    m = store.manifest
    same = (m.get("lm", {}).get("fingerprint") == want["lm"] and m["corpus"]["fingerprint"] == want["corpus"]
            and m["corpus"]["tokens"] == want["tokens"] and (m["window"], m["stride"]) == want["windows"]
            and m["index"]["config"] == want["index"])
    return store if same else None


def forwarded(n: int, window: int, stride: int) -> int:
    """Tokens the LM runs over to score n tokens with sliding windows (about 2n at stride = window / 2)."""
    return sum(end - begin for begin, end, _ in windows(n, window, stride))


def estimate_minutes(r: dict, build: dict, ds_tokens: int, full_ds: int, full_eval: int, cfg: IndexConfig) -> dict:
    """The full run's time (all tokens, the same flags) from this run's measured parts, each scaled by what drives
    it: the LM passes by the tokens run through the windows; IVF/PQ training by its sample (64 vectors a centroid, or all keys if fewer); adding
    by keys; the search by queries x keys scanned (flat: all; IVF: the nlist centroids + nprobe/nlist of the keys);
    the sweep by queries."""
    sample = lambda n: len(training_rows(n, cfg))  # noqa: E731
    scanned = (lambda n: n) if cfg.kind == "flat" else (lambda n: cfg.nlist + n * min(cfg.nprobe, cfg.nlist) / cfg.nlist)  # noqa: E731
    n, q = r["entries"], r["tokens"]
    w, st = r["window"], r["stride"]
    parts = {
        "datastore_forward": (build["build_seconds"] - build["train_seconds"] - build["add_seconds"])
        * forwarded(full_ds, w, st) / forwarded(ds_tokens, w, st),
        "train": build["train_seconds"] * sample(full_ds) / sample(n) if cfg.needs_training() else 0.0,
        "add": build["add_seconds"] * full_ds / n,
        "eval_forward": (r["seconds"] - r["search_seconds"] - r["sweep_seconds"])
        * forwarded(full_eval, w, st) / forwarded(q + 1, w, st),
        "search": r["search_seconds"] * full_eval / q * scanned(full_ds) / scanned(n),
        "sweep": r["sweep_seconds"] * full_eval / q,
    }
    return {k: round(v / 60, 1) for k, v in parts.items()} | {"total": round(sum(parts.values()) / 60, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="causal LM (a name of experiments/_models.py or a directory)")
    p.add_argument("--datastore-corpus", default=None,
                   help="text the datastore is built from (default: WikiText-2 valid under the data root)")
    p.add_argument("--eval-text", default=None, help="text scored (default: WikiText-2 test under the data root)")
    p.add_argument("--max-datastore-tokens", type=int, default=None, help="cap on the datastore corpus's tokens")
    p.add_argument("--max-eval-tokens", type=int, default=None, help="cap on the scored text's tokens")
    p.add_argument("--window", type=int, default=1024, help="tokens of context per window (both passes)")
    p.add_argument("--stride", type=int, default=512, help="window start step (both passes)")
    add_precision_option(p, what="autocast of the LM's forward passes", choices=("auto", "fp32", "bf16"))
    p.add_argument("--kind", choices=["flat", "ivf"], default="ivf", help="datastore index: exact or inverted file")
    p.add_argument("--storage", choices=["fp16", "pq"], default="fp16", help="key storage: fp16 or PQ codes")
    p.add_argument("--nlist", type=int, default=1024, help="ivf: k-means cells")
    p.add_argument("--nprobe", type=int, default=8, help="ivf: cells searched per query")
    p.add_argument("--pq-m", type=int, default=64, help="pq: bytes per key (sub-vectors; must divide 576)")
    p.add_argument("--ks", default="8,64,256,1024", help="neighbours, comma-separated (one search with the largest)")
    p.add_argument("--lambdas", default="0,0.1,0.25,0.4,0.6", help="interpolation weights of p_kNN")
    p.add_argument("--temperatures", default="1,10,100,1000", help="softmax temperatures over -distance")
    p.add_argument("--store", default=None, help="datastore directory (default: OUT/store); reused when it matches")
    p.add_argument("--rebuild", action="store_true", help="rebuild the datastore even when a matching one exists")
    p.add_argument("--out", default="runs/knn_lm", help="results folder (result.json, the datastore)")
    p.add_argument("--docs", default=str(ROOT / "docs" / "knowledge.md"),
                   help="page whose 'knn-lm' block is written ('' to skip: smoke runs)")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = (" " + shlex.join(given)) if given else ""

    root = data_root()
    ds_text = Path(args.datastore_corpus or root / "corpora" / "wikitext-2" / "valid.txt")
    ev_text = Path(args.eval_text or root / "corpora" / "wikitext-2" / "test.txt")
    path = model_dir(args.model)
    out = Path(args.out)
    model, tok = load_adapted(path).eval(), Tokenizer.load(path)
    precision = Precision(args.precision, next(model.parameters()).device)  # auto -> what it runs as
    autocast = precision.autocast
    cfg = IndexConfig(kind=args.kind, storage=args.storage, metric="l2", nlist=args.nlist, nprobe=args.nprobe,
                      pq_m=args.pq_m)
    full_ds, full_eval = len(text_tokens(ds_text, tok)), len(text_tokens(ev_text, tok))
    ds_tokens = min(full_ds, args.max_datastore_tokens or full_ds)

    store_dir = Path(args.store) if args.store else out / "store"
    want = {"lm": lm_fingerprint(model, tok), "corpus": corpus_record(ds_text)["fingerprint"], "tokens": ds_tokens,
            "windows": (args.window, args.stride), "index": cfg.to_dict()}
    t0 = time.perf_counter()
    store = None if args.rebuild else reusable(store_dir, want)
    if store is None:
        store = build_datastore(model, tok, ds_text, store_dir, window=args.window, stride=args.stride,
                                max_tokens=ds_tokens, index=cfg, autocast=autocast, source=str(path))
        ds_seconds = time.perf_counter() - t0
    else:
        ds_seconds = store.manifest["build_seconds"]
        print(f"reusing the datastore in {store_dir} ({len(store):,} entries, built in {ds_seconds:.0f} s)")

    ids = eval_tokens(ev_text, tok, args.max_eval_tokens)
    ks = [k for k in ints(args.ks) if k <= len(store)] or [len(store)]
    r = knn_lm_perplexity(model, tok, ids, store, ks=ks, lambdas=floats(args.lambdas),
                          temperatures=floats(args.temperatures), window=args.window, stride=args.stride,
                          autocast=autocast)
    est = estimate_minutes(r, store.manifest, ds_tokens, full_ds, full_eval, cfg)
    base = r["base"]["perplexity"]
    paper = next((g for g in r["grid"] if all(g[k] == v for k, v in PAPER.items())), None)
    factory = store.manifest["index"]["factory"]
    lambdas = floats(args.lambdas)
    rows = [f"| {k} | {t:g} | " + " | ".join(
        f"{next(g['perplexity'] for g in r['grid'] if (g['k'], g['temperature'], g['lambda']) == (k, t, lam)):.3f}"
        for lam in lambdas) + " |" for k in ks for t in floats(args.temperatures)]
    best = r["best"]
    lines = ["| k | T | " + " | ".join(f"λ = {lam:g}" for lam in lambdas) + " |",
             "|---|---|" + "---|" * len(lambdas), *rows, "",
             f"SmolLM2-135M ({path.name}), {r['tokens']:,} tokens of {ev_text.name} scored in windows of "
             f"{args.window} with stride {args.stride}, {precision.mode}; base perplexity **{base:.3f}** (the λ = 0 "
             f"column, equal to `ptm evaluate --text` by construction). Datastore: {len(store):,} entries from "
             f"{ds_text.parent.name}/{ds_text.name} (first {ds_tokens:,} of {full_ds:,} tokens), keys = the final "
             f"hidden state (576-d) in FAISS `{factory}`"
             + (f" searched with nprobe {cfg.nprobe}" if cfg.kind == "ivf" else "") +
             f", squared L2 distance; {store.entry_bytes():,.0f} bytes an entry (key code, list id, value) + "
             f"{store.storage_bytes(0) / 2 ** 20:.1f} MiB fixed, so 1M entries take "
             f"{store.storage_bytes(1_000_000) / 2 ** 30:.2f} GiB (target: 2 GiB).",
             f"Best of the grid: k = {best['k']}, T = {best['temperature']:g}, λ = {best['lambda']:g}: "
             f"**{best['perplexity']:.3f}** ({(best['perplexity'] / base - 1) * 100:+.1f}% relative), chosen on this "
             f"test text itself (optimistic)"
             + (f"; at the paper's untuned setting (k = 1024, λ = 0.25, T = 1): {paper['perplexity']:.3f} "
                f"({(paper['perplexity'] / base - 1) * 100:+.1f}%)" if paper else "") +
             f". Datastore built in {ds_seconds / 60:.1f} min, scoring took {r['seconds'] / 60:.1f} min "
             f"({(r['search_seconds'] + r['sweep_seconds']) / 60:.1f} of it kNN search and sweep). Measured {date.today().isoformat()} with "
             f"`python experiments/knn_lm.py{command}`."]
    block = "\n".join(lines)
    print(block)
    print(f"estimated full run (all {full_ds:,} datastore and {full_eval:,} eval tokens, the other flags as here, "
          f"this machine's rates now): {est['total']} min = " + ", ".join(f"{k} {v}" for k, v in est.items()
                                                                    if k != "total"), flush=True)
    if args.docs:
        write_results_block(args.docs, block, "Knowledge and memory", name="knn-lm")
    summary = {"experiment": "knn_lm", "base": round(base, 4), "best": best, "paper_setting": paper,
               "entries": len(store), "eval_tokens": r["tokens"], "entry_bytes": store.entry_bytes(),
               "gib_per_million_entries": round(store.storage_bytes(1_000_000) / 2 ** 30, 3),
               "datastore_seconds": round(ds_seconds, 1), "score_seconds": r["seconds"],
               "search_seconds": r["search_seconds"], "sweep_seconds": r["sweep_seconds"],
               "estimated_full_minutes": est}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({**summary, "grid": r["grid"]}, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
