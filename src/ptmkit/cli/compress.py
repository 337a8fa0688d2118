"""`ptm compress MODEL --method M --out DIR`: prune, quantise, share or distil a model directory, with a report."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ptmkit.cli.formatting import DefaultsRaw
from ptmkit.cli.overrides import describe, parse_dotted
from ptmkit.config import ConfigError


def _methods_help() -> str:
    from ptmkit.recipes.compress import KINDS, method_config

    lines = ["compression methods (--method NAME) and their options (--NAME.KEY VALUE):"]
    for name, kind in sorted(KINDS.items(), key=lambda kv: (kv[1], kv[0])):
        lines.append(f"\n{name} ({kind}):")
        lines.extend(describe(method_config(name), prefix=f"{name}."))
    return "\n".join(lines)


def _epilog_on_help(p: argparse.ArgumentParser) -> None:
    """The methods' options in --help, built only when help is asked for: the quantisers' configs import torchao,
    which every other `ptm` command should not pay for."""
    plain = p.format_help

    def format_help() -> str:
        p.epilog = _methods_help()
        return plain()

    p.format_help = format_help


def add_parser(sub) -> None:
    from ptmkit.recipes.compress import KINDS, CompressConfig

    d = {f.name: f.default for f in dataclasses.fields(CompressConfig) if f.default is not dataclasses.MISSING}
    p = sub.add_parser(
        "compress",
        help="prune, quantise, share or distil a model directory (survey §6.3), with a size/score report",
        description=(
            "Apply one compression method to MODEL and write OUT/model (a model directory), OUT/report.json "
            "(parameters and size on disk before and after, the sparsity or bit widths reached, dev scores and "
            "retention) and OUT/metrics.jsonl. Methods that measure importance, calibrate or estimate Hessian traces "
            "use a few training batches of --task; with --task (or a fine-tuned MODEL that records its task) both "
            "models are scored on its dev split. Distillation methods train a student from MODEL's layers "
            "(--student-layers) on the one training engine: OUT is then a fine-tuning run whose best/ is the student. "
            "MODEL is never modified."
        ),
        formatter_class=DefaultsRaw,
    )
    _epilog_on_help(p)
    p.add_argument("model", help="model directory (a fine-tuned run's best/ for task scores)")
    p.add_argument("--out", required=True, help="run directory for model/, report.json and metrics.jsonl")
    p.add_argument("--method", required=True, choices=sorted(KINDS), help="the compression method (listed below)")
    p.add_argument("--task", default=None, help="data for importance, calibration, distillation and dev scores "
                                                "(default: the task MODEL was fine-tuned on, if it records one)")
    p.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default: MODEL's, else 128)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="examples per batch")
    p.add_argument("--data-batches", type=int, default=d["data_batches"],
                   help="training batches for importance, calibration and Hessian traces")
    p.add_argument("--no-eval", action="store_true", help="skip the dev scores before and after")
    p.add_argument("--student-layers", type=int, default=None,
                   help="distillation: the student keeps this many of MODEL's layers (evenly spaced, last included)")
    p.add_argument("--epochs", type=float, default=d["epochs"],
                   help="distillation and the methods that train (gradual-magnitude, movement, qat-int8): epochs")
    p.add_argument("--lr", type=float, default=d["lr"], help="learning rate of the methods that train")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed for the data batches and training")
    p.add_argument("--overwrite", action="store_true", help="replace a compression run already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run, accepts_overrides=True)


def config_from_args(args):
    from ptmkit.recipes.compress import CompressConfig

    options = {}
    for key, value in parse_dotted(getattr(args, "overrides", []) or []).items():
        section, _, name = key.partition(".")
        if section != args.method or not name:
            raise ConfigError(f"option --{key} is not an option of --method {args.method}; its options are "
                              f"--{args.method}.KEY (see ptm compress --help)")
        options[name] = value
    return CompressConfig(model=args.model, out=args.out, method=args.method, method_options=options, task=args.task,
                          data_dir=args.data_dir, max_length=args.max_length, batch_size=args.batch_size,
                          data_batches=args.data_batches, evaluate=not args.no_eval,
                          student_layers=args.student_layers, epochs=args.epochs, lr=args.lr, seed=args.seed,
                          overwrite=args.overwrite, show_progress=not args.no_progress)


def run(args) -> int:
    from ptmkit.recipes.compress import compress

    r = compress(config_from_args(args))
    if r["kind"] in ("distill", "train"):
        print(f"{r['method']}: the compressed model is {r['student']}: dev {json.dumps(r.get('dev'))}")
        return 0
    b, a = r["before"], r["after"]
    print(f"{r['method']}: {b['parameters']:,} -> {a['parameters']:,} parameters, "
          f"{b['bytes'] / 1e6:.1f} -> {a['bytes'] / 1e6:.1f} MB on disk; wrote {args.out}/model")
    if "dev" in r:
        print("dev before: " + json.dumps(r["dev"]["before"]) + "\ndev after:  " + json.dumps(r["dev"]["after"]))
    return 0
