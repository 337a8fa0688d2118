"""A real `ptm pretrain` process killed at random moments (SIGKILL: mid-step, mid-checkpoint, mid-log) or stopped
with Ctrl-C resumes with `--resume` to the same losses and weights as a run never interrupted; a torn last line of
metrics.jsonl (what a full disk or a kill leaves) is dropped with a warning; a malicious pickle never runs."""

from __future__ import annotations

import os
import re
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ptmkit.config import to_dict
from ptmkit.train.logging import read_metrics
from tests.faults.kill import kill_repeatedly_then_finish
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
STEPS = 40


def _config(corpus, tmp_path):  # noqa: F811
    cfg = to_dict(_cfg(corpus, "unused", train__steps=STEPS, train__checkpoint_every=4, train__eval_every=10,
                       train__keep_last=2))
    cfg.pop("out")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(config, out, *extra):
    return [sys.executable, "-m", "ptmkit.cli", "pretrain", str(config), "--out", str(out), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _losses(run):
    return [r["loss"] for r in read_metrics(run) if r["split"] == "train"]


def _assert_same(a, b):
    assert _losses(a) == _losses(b)
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and wa.keys() == wb.keys()


def _start_and_wait_for_a_checkpoint(config, out):
    proc = subprocess.Popen(_cmd(config, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else True:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    return proc


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("ref")
    config = _config(corpus, d)
    subprocess.run(_cmd(config, d / "run"), env=ENV, check=True, capture_output=True)
    return config, d / "run"


def test_kill_9_at_random_moments_then_resume(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    landed = kill_repeatedly_then_finish(_cmd(config, out), out, ENV, kills=3, max_delay=0.3, seed=1)
    assert landed >= 2  # the kills really landed mid-run (and the run resumed from each)
    _assert_same(ref, out)


def test_ctrl_c_checkpoints_and_resumes(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    proc = _start_and_wait_for_a_checkpoint(config, out)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # finished the step, checkpointed, exited as interrupted
    r = subprocess.run(_cmd(config, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(rf"resuming \S+ at step \d+ of {STEPS}", r.stderr), r.stderr  # it says where it continues from
    _assert_same(ref, out)


def test_a_torn_last_metrics_line_is_dropped_on_resume(reference, tmp_path):
    config, ref = reference
    out = tmp_path / "run"
    proc = _start_and_wait_for_a_checkpoint(config, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 999, "split": "tra')  # a line cut off mid-write
    r = subprocess.run(_cmd(config, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cut-off last line" in r.stderr
    _assert_same(ref, out)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_never_runs(tmp_path):
    from ptmkit.models import build_model, load_model, make_config, save_model

    cfg = make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16))
    save_model(build_model("bert", cfg), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, f)
    with pytest.raises(Exception) as e:
        load_model(tmp_path / "m")
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "weights_only=False" not in msg
    assert not marker.exists()  # the payload never executed


def test_a_write_that_fails_part_way_leaves_the_last_checkpoint_to_resume_from(reference, tmp_path):
    """A file-size limit (RLIMIT_FSIZE in the child, as a full disk) makes the next checkpoint write fail: the run
    stops with a message naming the limit, leaves no torn checkpoint, and resumes to the same end once it can write."""
    import resource

    config, ref = reference
    out = tmp_path / "run"
    proc = _start_and_wait_for_a_checkpoint(config, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    biggest = max(f.stat().st_size for f in (out / "checkpoints" / kept[-1]).iterdir())

    def limit():  # small files (metrics, state) still fit; the next checkpoint's largest file does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest // 2, biggest // 2))

    r = subprocess.run(_cmd(config, out, "--resume"), env=ENV, capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 2 and "file-size limit" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == kept  # nothing torn published
    r = subprocess.run(_cmd(config, out, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(ref, out)
