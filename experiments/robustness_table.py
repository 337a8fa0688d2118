"""Issue 16: robustness — TextFooler and DeepWordBug against classifiers fine-tuned on SST-2 (accuracy before and
after, success rate, queries, perturbed words), and adversarial-data augmentation as a defence (the same attack on
the defended model, fine-tuned with the attacked model's own recipe plus the adversarial examples). Writes the
"robustness" block of docs/analysis.md.

    .venv/bin/python experiments/robustness_table.py                     # MiniLM and BERT-mini, 200 sentences
    .venv/bin/python experiments/robustness_table.py --reuse             # add a model, keep the others' results
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
from _records import reuse_or_run  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


FALLBACK = '{"epochs": 3.0, "lr": 1e-4, "max_train_examples": 8000, "max_length": 64}'
RECIPE = ("epochs", "lr", "max_train_examples", "max_length", "pooling", "batch_size", "warmup_ratio", "seed",
          "precision", "weight_decay")


def recipe(model: Path, given: str | None) -> dict:
    """The defended model's fine-tuning options: `given` (JSON), else the attacked classifier's own (the run folder
    above its best/ holds config.json), else FALLBACK."""
    if given:
        return json.loads(given)
    run = model.parent / "config.json"
    if run.is_file():
        c = json.loads(run.read_text())
        if "lr" in c and "epochs" in c:  # a `ptm finetune` run, not a model's own config.json
            return {k: c[k] for k in RECIPE if k in c and c[k] is not None}
    return json.loads(FALLBACK)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-sst2,bert-mini-sst2",
                   help="fine-tuned classifiers, comma list (names or directories): a row group each")
    p.add_argument("--base", default="minilm,bert-mini",
                   help="the pre-trained model each defended model starts from, one per --model, in order")
    p.add_argument("--encoder", default="minilm", help="sentence encoder of the similarity constraint")
    p.add_argument("--examples", type=int, default=200, help="dev sentences attacked")
    p.add_argument("--attack-train", type=int, default=1000, help="training sentences attacked for the defence")
    p.add_argument("--no-defence", action="store_true", help="skip the adversarial-training defence")
    p.add_argument("--finetune", default=None,
                   help="JSON options of the defended model's fine-tuning (default: the attacked classifier's own "
                        "recipe, read from its run's config.json, so only the adversarial examples differ; "
                        f"without one, {FALLBACK})")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root")
    p.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/SST-2)")
    p.add_argument("--out", default="runs/analysis/robustness", help="results")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'robustness' block is written")
    p.add_argument("--reuse", action="store_true",
                   help="read a model's attack results from --out when they are there instead of attacking again")
    args = p.parse_args(argv)
    data = Path(args.data)
    common = dict(synonyms=data / "lexical" / "ppdb_synonyms.txt", treebank=data / "ud" / "en_ewt-ud-train.conllu",
                  encoder=model_dir(args.encoder))
    models, bases = args.model.split(","), args.base.split(",")
    if len(models) != len(bases):
        p.error(f"--base names {len(bases)} models for {len(models)} classifiers; give one base per --model")
    rows, out = [], {}
    for name, base in zip(models, bases):
        model, here, label = model_dir(name), Path(args.out) / Path(name).name, Path(name).name

        def run(sub: str, fn, *a, **kw) -> dict:
            return reuse_or_run(here / sub, lambda: fn(model, *a, **kw), reuse=args.reuse)

        for kind in ("word", "char"):
            kw = common if kind == "word" else {}
            r = run(kind, analyze.attack, here / kind, data_dir=args.data_dir, kind=kind, max_examples=args.examples,
                    **kw)
            out[f"{label}/{kind}"] = r
            rows.append(f"| {label} | {'TextFooler' if kind == 'word' else 'DeepWordBug'} | "
                        f"{r['accuracy_before'] * 100:.1f} | {r['accuracy_after'] * 100:.1f} | "
                        f"{r['success_rate'] * 100:.1f} | {r['mean_queries']:.0f} | {r['perturbed_words_pct']:.1f} |")
        if not args.no_defence:
            r = run("defence", analyze.defend, model_dir(base), here / "defence", data_dir=args.data_dir,
                    attack_train=args.attack_train, attack_dev=args.examples,
                    finetune_options=recipe(model, args.finetune), **common)
            d = r["defended"]
            rows.append(f"| {label} | TextFooler on the defended model ({r['adversarial_training_examples']} "
                        f"adversarial training texts) | {d['accuracy_before'] * 100:.1f} | "
                        f"{d['accuracy_after'] * 100:.1f} | {d['success_rate'] * 100:.1f} | {d['mean_queries']:.0f} | "
                        f"{d['perturbed_words_pct']:.1f} |")
    lines = ["| model | attack | accuracy before | accuracy under attack | success rate | mean queries | words changed "
             "(%) |", "|---|---|---|---|---|---|---|", *rows, "",
             f"Each classifier on {args.examples} SST-2 dev sentences (a seeded subset); TextFooler with PPDB "
             "synonyms, en_ewt's most frequent tags and MiniLM sentence similarity >= 0.7, at most 30% of the words. "
             f"Measured {date.today().isoformat()} with `python experiments/robustness_table.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="robustness")
    summary = {"experiment": "robustness_table", **{k: {x: v[x] for x in ("success_rate", "accuracy_after")}
                                                    for k, v in out.items()}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
