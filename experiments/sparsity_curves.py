"""Issue 16: structural sparsity — the dev score as attention heads are removed, least important first (Michel et al.
2019), and lottery tickets found by iterative magnitude pruning with rewinding against random masks of the same
sparsity (Chen et al. 2020). Writes the "sparsity" block of docs/analysis.md and copies the plots to docs/analysis/.

    .venv/bin/python experiments/sparsity_curves.py                        # MiniLM, SST-2 capped at 8,000 examples
    .venv/bin/python experiments/sparsity_curves.py --rounds 3 --no-lottery
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finetuned", default="minilm-sst2", help="the fine-tuned model whose heads are removed")
    p.add_argument("--pretrained", default="minilm", help="the pre-trained model the tickets rewind to")
    p.add_argument("--task", default="sst2", help="task")
    p.add_argument("--data-dir", default=None, help="the task's folder")
    p.add_argument("--rounds", type=int, default=8, help="lottery pruning rounds (20% of the rest each)")
    p.add_argument("--finetune", default='{"epochs": 3.0, "lr": 1e-4, "max_train_examples": 8000, "max_length": 64}',
                   help="JSON options of every lottery fine-tuning run")
    p.add_argument("--no-lottery", action="store_true", help="only the head curve")
    p.add_argument("--max-eval", type=int, default=None, help="dev subset of the head curve")
    p.add_argument("--out", default="runs/analysis/sparsity", help="results")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose results block is written")
    p.add_argument("--block", default="sparsity",
                   help="the results block (and figure name prefix): one per model, e.g. sparsity-bert-mini for "
                        "--finetuned bert-mini-sst2 --pretrained bert-mini")
    args = p.parse_args(argv)
    heads = analyze.heads(model_dir(args.finetuned), Path(args.out) / "heads", args.task, args.data_dir,
                          max_eval_examples=args.max_eval)
    metric = [k for k in heads["curve"][0] if k != "fraction"][0]
    lines = ["| heads removed | " + " | ".join(f"{c['fraction']:.0%}" for c in heads["curve"]) + " |",
             "|---|" + "---|" * len(heads["curve"]),
             f"| {metric} | " + " | ".join(f"{c[metric] * 100:.1f}" for c in heads["curve"]) + " |"]
    out = {"experiment": "sparsity_curves", "heads": heads["curve"]}
    figures = Path(args.docs).parent / "analysis" if args.docs else None  # beside the page; never docs/ from a test
    if figures:
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.out) / "heads" / "heads.png", figures / f"{args.block}_heads.png")
    if not args.no_lottery:
        lt = analyze.lottery(model_dir(args.pretrained), Path(args.out) / "lottery", args.task, args.rounds, 0.2,
                             args.data_dir, json.loads(args.finetune))
        out["lottery"] = lt["curve"]
        lines += ["", "| sparsity of the blocks | " + " | ".join(f"{c['sparsity']:.0%}" for c in lt["curve"]) + " |",
                  "|---|" + "---|" * len(lt["curve"]),
                  "| IMP ticket (rewound) | " + " | ".join(f"{c['ticket'] * 100:.1f}" for c in lt["curve"]) + " |",
                  "| random mask | " + " | ".join(f"{c['random'] * 100:.1f}" for c in lt["curve"]) + " |"]
        if figures:
            shutil.copyfile(Path(args.out) / "lottery" / "lottery.png", figures / f"{args.block}_lottery.png")
    note = (f"Heads: {Path(args.finetuned).name}, one-shot removal by Michel et al.'s importance on the {args.task} "
            "training loss, dev score without recovery.")
    if not args.no_lottery:
        note += (f" Tickets: {Path(args.pretrained).name} fine-tuned ({args.finetune}), 20% of the remaining weights "
                 "pruned a round by global magnitude, rewound to the pre-trained weights; random masks of the same "
                 "sparsity fine-tuned the same way.")
    given = [f"--{k.replace('_', '-')} {shlex.quote(str(getattr(args, k)))}" for k in ("finetuned", "pretrained", "block")
             if getattr(args, k) != p.get_default(k)] + (["--no-lottery"] if args.no_lottery else [])
    lines += ["", note + f" Measured {date.today().isoformat()} with `python experiments/sparsity_curves.py"
              + "".join(f" {g}" for g in given) + "`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name=args.block)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
