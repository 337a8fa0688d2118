"""Issue 16: layer-wise probing curves — UPOS (and dependency relations) from each layer's frozen vectors, with
Hewitt & Liang's control task, on en_ewt (train -> test) and transferred to German PUD, for each model named; the
time of the whole probe over all layers is reported against the issue's 5-minute target for MiniLM on en_ewt POS.
Writes the "probing" block of docs/analysis.md and one plot per model under docs/analysis/.

    .venv/bin/python experiments/probing_curves.py                             # MiniLM and BERT-mini, UPOS
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
    p.add_argument("--labels", type=names(["upos", "deprel"]), default="upos", help="what the probes predict")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root (ud/ inside)")
    p.add_argument("--max-train", type=int, default=None, help="training sentences (default: all of en_ewt train)")
    p.add_argument("--max-test", type=int, default=None, help="test and transfer sentences (default: all)")
    p.add_argument("--out", default="runs/analysis/probing", help="results and feature cache")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'probing' block is written")
    p.add_argument("--reuse", action="store_true",
                   help="read a model's results (and its measured seconds, seconds.json) from --out when they are "
                        "there, to add a model to the table without measuring the others again")
    args = p.parse_args(argv)
    ud = Path(args.data) / "ud"
    rows, summary = [], {}
    for name in args.models.split(","):
        path = model_dir(name)
        for label in args.labels:
            here = Path(args.out) / Path(name).name / label
            def measure() -> dict:
                t0 = time.perf_counter()
                r = analyze.probe(path, here, ud / "en_ewt-ud-train.conllu", ud / "en_ewt-ud-test.conllu", label,
                                  ud / "de_pud-ud-test.conllu", args.max_train, cache=Path(args.out) / "cache",
                                  max_test=args.max_test)
                (here / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
                return r

            r = reuse_or_run(here, measure, reuse=args.reuse, needs=("results.json", "seconds.json"))
            seconds = json.loads((here / "seconds.json").read_text())["seconds"]
            best = max(r["curve"], key=lambda x: x["accuracy"])
            sel = max(r["curve"], key=lambda x: x["selectivity"])
            tr = max(r["transfer"], key=lambda x: x["accuracy"])
            per_layer = " / ".join(f"{x['accuracy'] * 100:.1f}" for x in r["curve"])
            rows.append(f"| {name} | {label} | {per_layer} | "
                        f"{best['layer']} ({best['accuracy'] * 100:.1f}) | {sel['layer']} ({sel['selectivity'] * 100:.1f})"
                        f" | {tr['layer']} ({tr['accuracy'] * 100:.1f}) | {seconds:.0f} |")
            summary[f"{name}/{label}"] = {"best_layer": best["layer"], "best": best["accuracy"],
                                          "selectivity_layer": sel["layer"], "transfer_best": tr["accuracy"],
                                          "seconds": round(seconds, 1)}
            if args.docs:  # figures go beside the page the block is written to, never into docs/ from a test
                plot = Path(args.docs).parent / "analysis" / f"probing_{name}_{label}.png"
                plot.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(here / "probe.png", plot)
    lines = ["| model | label | test accuracy per layer (0 = embeddings) | best layer | most selective | "
             "best layer on German PUD | seconds |", "|---|---|---|---|---|---|---|", *rows, "",
             f"Linear probes (AdamW, 10 epochs of mini-batches) on each word's first sub-token vector, trained on "
             f"en_ewt train{'' if args.max_train is None else f' ({args.max_train} sentences)'}, tested on en_ewt test;"
             f" selectivity = task - control-task accuracy (Hewitt & Liang 2019); transfer: the English probe on German"
             f" PUD. Seconds: features of every layer extracted (cached) and every probe trained. Measured "
             f"{date.today().isoformat()} with `python experiments/probing_curves.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="probing")
    out = {"experiment": "probing_curves", "rows": summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
