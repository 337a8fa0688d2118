"""`ptm icl MODEL --task TASK --template T --verbalizer W1,W2 --out DIR`: in-context learning with a causal LM."""

from __future__ import annotations

import argparse

from ptmkit.cli.options import add_precision_option
from ptmkit.cli.formatting import Defaults


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "icl",
        help="in-context learning: k-shot prompting of a causal LM on a classification task (GPT-3)",
        description=(
            "For each k in --shots and each seed, draw k labelled demonstrations from the training split, fill each "
            "into --template with its label word (--verbalizer), and classify every eval example by the label "
            "words' scores after the demonstrations and its own text. Reports accuracy (raw, and with contextual "
            "calibration, Zhao et al. 2021) against the majority class: OUT/results.json, metrics.jsonl, icl.png."
        ),
        formatter_class=Defaults,
    )
    p.add_argument("model", help="causal LM model directory (e.g. SmolLM2 after ptm convert)")
    p.add_argument("--task", required=True, help="a GLUE classification task (sst2, rte, ...) or table")
    p.add_argument("--out", required=True, help="directory for results.json, metrics.jsonl and icl.png")
    p.add_argument("--template", required=True,
                   help="the prompt of one example: {text_a}, {text_b} and the slot {mask}, which ends it "
                        "(e.g. 'Review: {text_a}\\nSentiment: {mask}'); \\n is a newline")
    p.add_argument("--verbalizer", required=True,
                   help="one label word per class in label order, comma-separated (e.g. negative,positive); each "
                        "must be one token (with the space before the slot)")
    p.add_argument("--shots", type=_ints, default=[0, 1, 4, 8, 16], help="demonstration counts, e.g. 0,1,4,8,16")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4], help="demonstration draws per k (k=0: one)")
    p.add_argument("--separator", default="\\n\\n", help="between demonstrations and before the query")
    p.add_argument("--data-dir", default=None, help="folder with the split files; unset: <data root>/glue/<TASK>")
    p.add_argument("--train-split", default="train", help="split the demonstrations come from")
    p.add_argument("--eval-split", default="dev", help="labelled split to classify")
    p.add_argument("--text-fields", nargs="+", default=None, help="task=table: one or two text columns")
    p.add_argument("--label-field", default=None, help="task=table: the label column")
    p.add_argument("--columns", nargs="+", default=None, help="task=table, header-less files: the column names")
    p.add_argument("--max-eval-examples", type=int, default=None, help="classify a seeded subset of this size")
    p.add_argument("--batch-size", type=int, default=16, help="queries per forward pass")
    add_precision_option(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation in --out: its finished (k, seed) runs are kept, the "
                        "others are scored (same options; --batch-size and --device may change)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def run(args) -> int:
    from ptmkit.recipes.icl import ICLConfig, icl

    cfg = ICLConfig(model=args.model, task=args.task, out=args.out, template=_unescape(args.template),
                    verbalizer=args.verbalizer, shots=args.shots, seeds=args.seeds,
                    separator=_unescape(args.separator), data_dir=args.data_dir, train_split=args.train_split,
                    eval_split=args.eval_split, text_fields=args.text_fields, label_field=args.label_field,
                    columns=args.columns, max_eval_examples=args.max_eval_examples, batch_size=args.batch_size,
                    precision=args.precision, device=args.device, overwrite=args.overwrite,
                    show_progress=not args.no_progress)
    res = icl(cfg, resume=args.resume)
    print(f"{res['task']} {res['eval_split']} ({res['eval_examples']} examples), majority class "
          f"{res['majority_baseline_accuracy']:.4f}")
    for k, row in res["shots"].items():
        a, c = row["accuracy"], row["calibrated_accuracy"]
        print(f"  k={k:>2}: accuracy {a['mean']:.4f} ± {a['std']:.4f}, calibrated {c['mean']:.4f} ± {c['std']:.4f} "
              f"({a['runs']} run{'s' if a['runs'] > 1 else ''})")
    print(f"wrote {args.out}/ (results.json, metrics.jsonl, icl.png) in {res['wall_time_s']:.0f} s")
    return 0
