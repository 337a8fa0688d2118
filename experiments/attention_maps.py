"""Issue 16: what the models' attention and representations show — Clark et al.'s head statistics, the best head per
UD relation against the best fixed offset, Perturbed Masking trees against right-branching, and CKA between layers
with their anisotropy, for each model named. Writes the "attention" block of docs/analysis.md and copies the plots to
docs/analysis/.

    .venv/bin/python experiments/attention_maps.py                        # MiniLM and BERT-mini
    .venv/bin/python experiments/attention_maps.py --models minilm --sentences 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402
from _records import reuse_or_run  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm,bert-mini", help="comma list of names or directories")
    p.add_argument("--sentences", type=int, default=500, help="treebank sentences (Perturbed Masking: a fifth)")
    p.add_argument("--lines", type=int, default=300, help="WikiText-2 lines for head statistics and CKA")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root")
    p.add_argument("--out", default="runs/analysis/attention", help="results")
    p.add_argument("--reuse", action="store_true",
                   help="read each analysis's results.json from --out when it is there (to add a model to the table "
                        "without measuring the others again)")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'attention' block is written")
    args = p.parse_args(argv)
    data = Path(args.data)
    dev, text = data / "ud" / "en_ewt-ud-dev.conllu", data / "corpora" / "wikitext-2" / "valid.txt"
    rows, summary = [], {}
    for name in args.models.split(","):
        path, key = model_dir(name), Path(name).name
        out = Path(args.out) / key
        def run(sub: str, fn, *a, **kw) -> dict:
            return reuse_or_run(out / sub, lambda: fn(path, out / sub, *a, **kw), reuse=args.reuse)

        heads = run("heads", analyze.attention, text, args.lines)
        syn = run("syntax", analyze.syntax, dev, args.sentences, min_count=20)
        # Perturbed Masking measures how masking word i changes word j's vector, both ways: a causal LM (word j
        # never sees a later i) or a tokenizer without a mask token has no such cell
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
        masks = Tokenizer.load(path).mask_id is not None and not any(a.endswith("ForCausalLM") for a in archs)
        pm = run("perturbed", analyze.perturbed, dev, max(1, args.sentences // 5), max_words=20) if masks else None
        ck = run("cka", analyze.cka, text, lines=args.lines)
        best = sorted(syn["relations"].items(), key=lambda kv: -kv[1]["count"])[:4]
        rows.append(f"| {key} | " + ", ".join(f"{rel} {x['best_head_accuracy'] * 100:.0f}"
                                              f"{' (head→dep)' if x.get('direction') == 'head->dependent' else ''}"
                                              f" vs {x['baseline_accuracy'] * 100:.0f}" for rel, x in best)
                    + (f" | {pm['uas'] * 100:.1f} ({pm['uas_gold_root'] * 100:.1f}) vs "
                       f"{pm['right_branching_uas'] * 100:.1f}" if pm else " | – (no mask token)")
                    + " | " + " / ".join(f"{a:.2f}" for a in ck["anisotropy"]) + " |")
        summary[key] = {"syntax": {rel: x["best_head_accuracy"] for rel, x in best}, "perturbed_uas": pm and pm["uas"],
                        "anisotropy": ck["anisotropy"], "entropy_layer_mean": [sum(r) / len(r) for r in
                                                                             heads["statistics"]["entropy"]]}
        if args.docs:  # figures go beside the page the block is written to, never into docs/ from a test
            figures = Path(args.docs).parent / "analysis"
            figures.mkdir(parents=True, exist_ok=True)
            for sub, png in (("heads", "attention"), ("syntax", "syntax"), ("cka", "cka"), ("perturbed", "perturbed")):
                if (out / sub / f"{png}.png").is_file():
                    shutil.copyfile(out / sub / f"{png}.png", figures / f"{png}_{key}.png")
    lines = ["| model | best head vs best offset, accuracy % (4 most frequent relations) | Perturbed Masking UAS % "
             "(gold root) vs right-branching | anisotropy per layer |", "|---|---|---|---|", *rows, "",
             f"Syntax: {args.sentences} en_ewt dev sentences, Clark et al.'s word-level attention, the better of the "
             "two directions (head→dep: the head word attending to its dependent; otherwise the dependent to its head); "
             "Perturbed Masking: "
             f"{max(1, args.sentences // 5)} sentences of at most 20 words, last layer, Eisner decoding, punctuation "
             f"left out; head statistics and CKA: {args.lines} WikiText-2 valid lines (plots in docs/analysis/). "
             f"Measured {date.today().isoformat()} with `python experiments/attention_maps.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="attention")
    result = {"experiment": "attention_maps", "models": summary}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
