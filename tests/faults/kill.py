"""SIGKILL a training process at a random moment after it writes a checkpoint, several times over one run."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path


def _checkpoints(out: Path) -> set[str]:
    d = out / "checkpoints"
    return {p.name for p in d.glob("step-*")} if d.is_dir() else set()


def kill_after_a_new_checkpoint(cmd: list[str], out: Path, env: dict, delay: float, timeout: float = 120) -> bool:
    """Start `cmd`, wait until it publishes a checkpoint that `out` did not hold before, sleep `delay` seconds (the
    kill then lands mid-step, mid-write or mid-log) and SIGKILL it. True when the kill landed, False when the run
    finished by itself first (then it must have exited 0)."""
    before = _checkpoints(out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not _checkpoints(out) - before:
            if proc.poll() is not None:  # a resumed run whose last checkpoint was its end has nothing left to write
                assert proc.returncode == 0, f"the run failed (exit {proc.returncode}) before writing a checkpoint"
                return False
            assert time.time() < deadline, "no new checkpoint within the timeout"
            time.sleep(0.01)
        time.sleep(delay)
        landed = proc.poll() is None
        if landed:
            proc.send_signal(signal.SIGKILL)
        return landed
    finally:
        if proc.poll() is None:
            proc.kill()  # a failed assertion never leaves the run behind
        proc.wait()


def kill_repeatedly_then_finish(cmd: list[str], out: Path, env: dict, kills: int, max_delay: float,
                                seed: int, timeout: float = 240) -> int:
    """One run killed up to `kills` times, each restart with --resume, then resumed to its end. Chaining the kills
    (rather than a fresh run per kill) tests resuming a resumed run, and costs one process start per kill instead
    of two (a start is ~5 s of imports on the CI machine). Returns how many kills landed; raises when the final
    resume fails."""
    rng = random.Random(seed)
    landed = 0
    for i in range(kills):
        if not kill_after_a_new_checkpoint(cmd + (["--resume"] if i else []), out, env, rng.uniform(0, max_delay)):
            return landed  # the run finished before this kill (exit 0): nothing left to resume
        landed += 1
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return landed
