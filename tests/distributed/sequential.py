"""Run several `ptm pretrain` commands one after another in the same torchrun processes (tests/distributed/launch.py's
torchrun_many), so the ranks' imports (~5 s of CPU a process, most of a tiny run's cost on the 2-core CI machine)
are paid once for all of them.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed/sequential.py RUNS.json

RUNS.json: a list of argument lists for `ptm`, e.g. [["pretrain", "a.yaml", "--out", "runs/a"], ...]. Stops at the
first run that fails, naming it.

The process group is set up once, here, and kept between runs: a run finds it initialised and uses it (as
ptmkit.parallel.mesh.setup does under any launcher that initialises it first), and its teardown only waits for every
rank. Re-initialising the default group within one torchrun launch hangs (the second group's rendezvous keys meet
the first's in torchrun's store); each launch of tests/distributed/launch.py's torchrun still covers a run's own
set-up and teardown."""

from __future__ import annotations

import gc
import json
import os
import sys

import torch.distributed as dist

from ptmkit.cli.main import main
from ptmkit.parallel import mesh


def _wait_only(wait: bool = True) -> None:
    gc.collect()  # as mesh.teardown: release FSDP's finished collectives while the group is alive
    if wait:
        dist.barrier()


_setup = mesh.setup


def _setup_then_meet(cfg, device):
    state = _setup(cfg, device)
    # every rank has checked the output folder (before run_on_ranks) before any rank writes to it: in a launch of
    # one run, init_process_group's rendezvous is that meeting point
    dist.barrier()
    return state


if __name__ == "__main__":
    dist.init_process_group("gloo")
    mesh.setup, mesh.teardown = _setup_then_meet, _wait_only  # run_on_ranks looks both up at call time
    code = 0
    for i, argv in enumerate(json.loads(open(sys.argv[1]).read())):
        code = main(argv)
        if code:
            print(f"sequential.py: run {i} ({' '.join(argv)}) exited with {code}", file=sys.stderr)
            break
    else:
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as ptmkit.cli.main.entry: gloo can abort at interpreter shutdown (pytorch#179291)
