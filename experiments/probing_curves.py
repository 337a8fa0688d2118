"""Issue 16: layer-wise probing curves — UPOS (and dependency relations) from each layer's frozen vectors, with
Hewitt & Liang's control task, on en_ewt (train -> test) and transferred to German PUD, and CoNLL-2003 entity tags
(train -> test), for each model named; the time of the whole probe over all layers is reported against the issue's
5-minute target for MiniLM on en_ewt POS. Writes a block of docs/analysis.md ("probing", or --block) and one plot per
model under docs/analysis/. Each result of the full protocol (no --max-train/--max-test) is kept as a record
(experiments/records/probing_curves/), so a later session rebuilds the table without measuring again.

    .venv/bin/python experiments/probing_curves.py                             # MiniLM and BERT-mini, UPOS
    .venv/bin/python experiments/probing_curves.py --models minilm,smollm2 --labels ner --block probing-ner
    .venv/bin/python experiments/probing_curves.py --models minilm --labels upos,deprel --max-train 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import names  # noqa: E402
from _models import ROOT, model_dir  # noqa: E402
from _records import reuse_or_run  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm,bert-mini", help="names (experiments/_models.py) or directories")
    p.add_argument("--labels", type=names(["upos", "deprel", "ner"]), default="upos",
                   help="what the probes predict: UD part of speech or relation (en_ewt), CoNLL-2003 entity tags")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root (ud/ and ner/conll2003/ inside)")
    p.add_argument("--max-train", type=int, default=None, help="training sentences (default: all of en_ewt train)")
    p.add_argument("--max-test", type=int, default=None, help="test and transfer sentences (default: all)")
    p.add_argument("--out", default="runs/analysis/probing", help="results and feature cache")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'probing' block is written")
    p.add_argument("--block", default="probing", help="name of the docs block written (one per table)")
    p.add_argument("--reuse", action="store_true",
                   help="read a model's results from --out or experiments/records when they are there, to add a "
                        "model to the table without measuring the others again")
    args = p.parse_args(argv)
    ud, ner = Path(args.data) / "ud", Path(args.data) / "ner" / "conll2003"
    files = {"upos": (ud / "en_ewt-ud-train.conllu", ud / "en_ewt-ud-test.conllu", ud / "de_pud-ud-test.conllu"),
             "ner": (ner / "train.txt", ner / "test.txt", None)}  # no other language's entity file in the data
    files["deprel"] = files["upos"]
    full = args.max_train is None and args.max_test is None  # the table's protocol: its results are kept
    rows, summary = [], {}
    for name in args.models.split(","):
        path = model_dir(name)
        for label in args.labels:
            here = Path(args.out) / Path(name).name / label
            train, test, transfer = files[label]

            def measure() -> dict:
                t0 = time.perf_counter()
                r = analyze.probe(path, here, train, test, label, transfer, args.max_train,
                                  cache=Path(args.out) / "cache", max_test=args.max_test)
                r["seconds"] = time.perf_counter() - t0  # kept in the results: the table reports it
                (here / "results.json").write_text(json.dumps(r, indent=1) + "\n")
                return r

            r = reuse_or_run(here, measure, reuse=args.reuse,
                             record=f"probing_curves/{Path(name).name}/{label}" if full else None)
            best = max(r["curve"], key=lambda x: x["accuracy"])
            sel = max(r["curve"], key=lambda x: x["selectivity"])
            tr = max(r["transfer"], key=lambda x: x["accuracy"]) if r.get("transfer") else None
            per_layer = " / ".join(f"{x['accuracy'] * 100:.1f}" for x in r["curve"])
            transferred = f"{tr['layer']} ({tr['accuracy'] * 100:.1f})" if tr else "–"
            rows.append(f"| {name} | {label} | {per_layer} | {r['majority_accuracy'] * 100:.1f} | "
                        f"{best['layer']} ({best['accuracy'] * 100:.1f}) | {sel['layer']} ({sel['selectivity'] * 100:.1f})"
                        f" | {transferred} | {r['seconds']:.0f} |")
            summary[f"{name}/{label}"] = {"best_layer": best["layer"], "best": best["accuracy"],
                                          "majority": r["majority_accuracy"], "selectivity_layer": sel["layer"],
                                          "transfer_best": tr["accuracy"] if tr else None,
                                          "seconds": round(r["seconds"], 1)}
            if args.docs:  # figures go beside the page the block is written to, never into docs/ from a test
                plot = Path(args.docs).parent / "analysis" / f"probing_{name}_{label}.png"
                plot.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(here / "probe.png", plot)
    data = " and ".join(x for x, labels in (("en_ewt train -> test (UD labels)", {"upos", "deprel"}),
                                            ("CoNLL-2003 train -> test (IOB2 entity tags)", {"ner"}))
                        if labels & set(args.labels))
    lines = ["| model | label | test accuracy per layer (0 = embeddings) | majority label | best layer | "
             "most selective | best layer on German PUD | seconds |", "|---|---|---|---|---|---|---|---|", *rows, "",
             f"Linear probes (AdamW, 10 epochs of mini-batches) on each word's first sub-token vector, on {data}"
             f"{'' if args.max_train is None else f' ({args.max_train} training sentences)'}; majority label: the "
             f"accuracy of always answering the training words' most frequent label; selectivity = task - "
             f"control-task accuracy (Hewitt & Liang 2019); transfer: the English probe on German PUD (UD labels "
             f"only). Seconds: features of every layer extracted (cached) and every probe trained. Measured "
             f"{date.today().isoformat()} with `python experiments/probing_curves.py "
             f"{' '.join(a for a in (argv if argv is not None else sys.argv[1:]))}`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name=args.block)
    out = {"experiment": "probing_curves", "rows": summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
