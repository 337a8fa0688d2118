"""Run an experiment's pending runs in several single-thread processes at once.

On a small CPU, N one-thread processes finish a grid of small fine-tunings sooner than one process of N threads (a
tiny model leaves the extra threads mostly idle: 1.6x for the test suite's two workers). Each run is the experiment
script itself, called again for that one run, so every run writes its results (and its record) exactly as it would
alone; the parent only schedules, logs and then reads the results back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_in_workers(script: str | Path, jobs: list[tuple[str, list[str]]], common: list[str], workers: int,
                   log_dir: Path) -> list[str]:
    """Run `script` once per job (name, its own arguments) plus `common`, at most `workers` at a time, each with one
    thread; each run's output goes to log_dir/<name>.log. Returns the names of the runs that failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, failed = list(jobs), {}, []
    total, done = len(jobs), 0
    while pending or running:
        while pending and len(running) < workers:
            name, argv = pending.pop(0)
            log = log_dir / f"{name.replace('/', '_')}.log"
            handle = log.open("w")
            proc = subprocess.Popen([sys.executable, str(script), *argv, *common], env=env, stdout=handle,
                                    stderr=subprocess.STDOUT)
            running[name] = (proc, handle, log, time.perf_counter())
            print(f"[workers] started {name} ({done + len(running)}/{total}; log {log})", flush=True)
        time.sleep(1.0)
        for name, (proc, handle, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            handle.close()
            del running[name]
            done += 1
            if proc.returncode != 0:
                failed.append(name)
                tail = log.read_text().splitlines()[-5:]
                print(f"[workers] FAILED {name} (exit {proc.returncode}); last lines of {log}:\n  " + "\n  ".join(tail),
                      flush=True)
            else:
                print(f"[workers] finished {name} in {time.perf_counter() - t0:.0f} s ({done}/{total})", flush=True)
    return failed
