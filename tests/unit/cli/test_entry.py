"""The process entry: a torchrun rank leaves with os._exit after flushing, and still reports its exit code and output."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(tmp_path, world: str, script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": world}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


# An atexit handler runs at interpreter finalization; os._exit skips it, which is how the test tells the two apart.
SCRIPT = """
import atexit, sys
atexit.register(lambda: print("finalized"))
from ptmkit.cli.main import entry
print("buffered line", end="")  # no newline: only an explicit flush gets it out before os._exit
entry(sys.argv[1:] or ["pretrain", "missing.yaml"])
"""


def test_a_torchrun_rank_exits_without_finalization_but_keeps_its_code_and_output(tmp_path):
    proc = _run(tmp_path, "2", SCRIPT)
    assert proc.returncode == 2, proc.stderr
    assert "buffered line" in proc.stdout and "finalized" not in proc.stdout
    assert "missing.yaml" in proc.stderr  # the error message was flushed before the process left


def test_a_single_process_exits_normally(tmp_path):
    proc = _run(tmp_path, "1", SCRIPT)
    assert proc.returncode == 2, proc.stderr
    assert "finalized" in proc.stdout and "missing.yaml" in proc.stderr
