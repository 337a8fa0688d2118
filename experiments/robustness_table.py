"""Issue 16: robustness — TextFooler and DeepWordBug against a classifier fine-tuned on SST-2 (accuracy before and
after, success rate, queries, perturbed words), and adversarial-data augmentation as a defence (the same attack on
the defended model). Writes the "robustness" block of docs/analysis.md.

    .venv/bin/python experiments/robustness_table.py                     # MiniLM fine-tuned on SST-2, 200 sentences
    .venv/bin/python experiments/robustness_table.py --examples 50 --no-defence
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-sst2", help="a fine-tuned classifier (name or directory)")
    p.add_argument("--base", default="minilm", help="the pre-trained model the defended model starts from")
    p.add_argument("--encoder", default="minilm", help="sentence encoder of the similarity constraint")
    p.add_argument("--examples", type=int, default=200, help="dev sentences attacked")
    p.add_argument("--attack-train", type=int, default=1000, help="training sentences attacked for the defence")
    p.add_argument("--no-defence", action="store_true", help="skip the adversarial-training defence")
    p.add_argument("--finetune", default='{"epochs": 3.0, "lr": 1e-4, "max_train_examples": 8000, "max_length": 64}',
                   help="JSON options of the defended model's fine-tuning")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root")
    p.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/SST-2)")
    p.add_argument("--out", default="runs/analysis/robustness", help="results")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'robustness' block is written")
    args = p.parse_args(argv)
    data = Path(args.data)
    common = dict(synonyms=data / "lexical" / "ppdb_synonyms.txt", treebank=data / "ud" / "en_ewt-ud-train.conllu",
                  encoder=model_dir(args.encoder))
    model = model_dir(args.model)
    rows, out = [], {}
    for kind in ("word", "char"):
        kw = common if kind == "word" else {}
        r = analyze.attack(model, Path(args.out) / kind, data_dir=args.data_dir, kind=kind,
                           max_examples=args.examples, **kw)
        out[kind] = r
        rows.append(f"| {'TextFooler' if kind == 'word' else 'DeepWordBug'} | {r['accuracy_before'] * 100:.1f} | "
                    f"{r['accuracy_after'] * 100:.1f} | {r['success_rate'] * 100:.1f} | {r['mean_queries']:.0f} | "
                    f"{r['perturbed_words_pct']:.1f} |")
    if not args.no_defence:
        r = analyze.defend(model, model_dir(args.base), Path(args.out) / "defence", data_dir=args.data_dir,
                           attack_train=args.attack_train, attack_dev=args.examples,
                           finetune_options=json.loads(args.finetune), **common)
        out["defence"] = r
        d = r["defended"]
        rows.append(f"| TextFooler on the defended model ({r['adversarial_training_examples']} adversarial training "
                    f"texts) | {d['accuracy_before'] * 100:.1f} | {d['accuracy_after'] * 100:.1f} | "
                    f"{d['success_rate'] * 100:.1f} | {d['mean_queries']:.0f} | {d['perturbed_words_pct']:.1f} |")
    lines = ["| attack | accuracy before | accuracy under attack | success rate | mean queries | words changed (%) |",
             "|---|---|---|---|---|---|", *rows, "",
             f"{args.model} on {args.examples} SST-2 dev sentences (a seeded subset); TextFooler with PPDB "
             "synonyms, en_ewt's most frequent tags and MiniLM sentence similarity >= 0.7, at most 30% of the words. "
             f"Measured {date.today().isoformat()} with `python experiments/robustness_table.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="robustness")
    summary = {"experiment": "robustness_table", **{k: {x: v[x] for x in ("success_rate", "accuracy_after")}
                                                    for k, v in out.items() if k != "defence"}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
