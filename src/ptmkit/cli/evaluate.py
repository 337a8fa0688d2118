"""`ptm evaluate MODEL --split dev --out DIR`: score a fine-tuned model directory, write metrics and predictions."""

from __future__ import annotations


from ptmkit.cli.options import add_precision_option
from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a fine-tuned model directory on a split; write metrics.json and predictions.tsv",
        description=(
            "Evaluate MODEL (a directory written by `ptm finetune`, e.g. RUN/best) on one split. Labelled "
            "splits get the task's metrics; unlabelled ones (GLUE test files) get predictions only. The task, "
            "max length and table columns default to what the fine-tuning run recorded in MODEL."
        ),
        formatter_class=Defaults,
    )
    p.add_argument("model", help="fine-tuned model directory (config.json + weights + tokenizer)")
    p.add_argument("--text", default=None,
                   help="score a language model on this text instead of a task: a plain or gzipped text file (or, for "
                        "a causal LM, a token-shard directory); causal LMs get sliding-window perplexity, masked LMs "
                        "pseudo-perplexity line by line")
    p.add_argument("--window", type=int, default=None,
                   help="--text, causal LM: tokens per window (default: the model's positions, at most 1024)")
    p.add_argument("--stride", type=int, default=None, help="--text, causal LM: window start step (default: window/2)")
    p.add_argument("--max-lines", type=int, default=None, help="--text, masked LM: score at most this many lines")
    p.add_argument("--task", default=None, help="task name; unset: the one recorded in MODEL/finetune_task.json")
    p.add_argument("--data-dir", default=None,
                   help="folder with the split files; unset: <data root>/glue/<TASK> or <data root>/ner/conll2003")
    p.add_argument("--split", default="dev", help="split to score (file name without extension)")
    p.add_argument("--out", default=None, help="folder for metrics.json and predictions.tsv; unset: print the metrics only")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example; unset: the fine-tuning run's, else 128")
    p.add_argument("--overlong", choices=["truncate", "error"], default="truncate",
                   help="longer examples: truncate (one warning with the count) or stop with an error")
    p.add_argument("--batch-size", type=int, default=128, help="examples per batch")
    add_precision_option(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--text-fields", nargs="+", default=None, help="task=table: text columns; unset: the fine-tuning run's")
    p.add_argument("--label-field", default=None, help="task=table: label column; unset: the fine-tuning run's")
    p.add_argument("--columns", nargs="+", default=None,
                   help="task=table, header-less CSV/TSV: the column names; unset: the fine-tuning run's")
    p.add_argument("--data-file", default=None,
                   help="task=table: one file holding every split; unset: the fine-tuning run's")
    p.add_argument("--split-column", default=None,
                   help="task=table with a data file: the column naming each row's split; unset: the fine-tuning run's")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip (and count) rows that cannot be read")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.text is not None:
        return _run_lm(args)
    from ptmkit.recipes.evaluate import evaluate

    res = evaluate(args.model, args.task, args.data_dir, args.split, args.out, max_length=args.max_length,
                   overlong=args.overlong, batch_size=args.batch_size, precision=args.precision,
                   device=args.device, text_fields=args.text_fields, label_field=args.label_field,
                   columns=args.columns, data_file=args.data_file, split_column=args.split_column,
                   skip_bad_rows=args.skip_bad_rows, show_progress=not args.no_progress)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items()) or "predictions only (unlabelled split)"
    print(f"{res['task']} {res['split']} ({res['examples']} examples, {res['seconds']:.1f} s): {scores}")
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/predictions.tsv")
    return 0


def _run_lm(args) -> int:
    from ptmkit.recipes.lm_eval import evaluate_lm

    r = evaluate_lm(args.model, args.text, args.out, window=args.window, stride=args.stride,
                    batch_size=None, max_lines=args.max_lines, precision=args.precision,
                    device=args.device, show_progress=not args.no_progress)
    if "perplexity" in r:
        print(f"perplexity {r['perplexity']:.3f} over {r['tokens']:,} tokens ({r['windows']} windows of {r['window']}, "
              f"stride {r['stride']}; {r['seconds']:.1f} s)")
    else:
        print(f"pseudo-perplexity {r['pseudo_perplexity']:.3f} over {r['tokens']:,} tokens of {r['sentences']} lines "
              f"({r['seconds']:.1f} s)")
    if args.out:
        print(f"wrote {args.out}/metrics.json")
    return 0
