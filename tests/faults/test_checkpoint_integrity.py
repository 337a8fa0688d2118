"""Checkpoints verify themselves: manifest.json (size + SHA-256 of every file) is written last; a resume takes the
newest checkpoint that verifies, names every broken one it passes over, and continues bit for bit from the intact
one; when none is intact the error names each and the fix. Every read of a truncated or corrupt file names the file:
training checkpoints (both formats), `ptm convert` of a checkpoint, and model directories."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.convert.base import CheckpointError
from ptmkit.objectives import CausalLM, seeded_generator
from ptmkit.train.checkpoint import (
    MANIFEST, BrokenCheckpointError, list_checkpoints, load_checkpoint, newest_intact_checkpoint, rotate,
    verify_checkpoint,
)
from ptmkit.train.dcp import load_dcp_checkpoint
from ptmkit.train.logging import read_metrics
from ptmkit.train.loop import TrainConfig, Trainer, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig
from tests.batches import ListBatches

STEPS = 6  # the full run; checkpoints every 2 steps


class Crash(Exception):
    """Stands in for a kill: the run stops after its checkpoint at step 4, without a clean exit."""


def _batches():
    out = []
    for k in range(5):
        ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(k))
        out.append(CausalLM().corrupt({"input_ids": ids}, seeded_generator(0, k)))
    return ListBatches(out)


def _model():
    torch.manual_seed(0)  # dropout stays on (0.1): the resumed run must restore the RNG too
    return build_model("gpt2", make_config("gpt2", dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2,
                                                        max_position_embeddings=16)), "causal-lm")


def _run(run_dir: Path, resume=False, crash_at: int | None = None, fmt="safetensors", keep_last=5):
    def on_step(t):
        if t == crash_at:
            raise Crash

    cfg = TrainConfig(steps=STEPS, precision="fp32", log_every=1, eval_every=0, checkpoint_every=2,
                      keep_last=keep_last, progress_bar=False, checkpoint_format=fmt)
    train(_model(), CausalLM(), _batches(), run_dir, cfg, OptimConfig(lr=3e-3), ScheduleConfig(warmup_steps=2),
          resume=resume, on_step=on_step)
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its losses, step by step."""
    return _run(tmp_path_factory.mktemp("ref") / "run")


def _crashed(tmp_path, fmt="safetensors") -> Path:
    """A run killed after its checkpoint at step 4 (checkpoints at steps 2 and 4)."""
    run = tmp_path / "run"
    with pytest.raises(Crash):
        _run(run, crash_at=4, fmt=fmt)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]
    return run


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def _truncate(f: Path, keep: float = 0.5) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def _flip(f: Path) -> None:
    """Change bytes in the middle of the file, keeping its size: only a checksum sees it."""
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _resume_warnings(caplog, run: Path) -> tuple[list[float], str]:
    with caplog.at_level(logging.INFO, logger="ptmkit"):
        losses = _run(run, resume=True)
    return losses, caplog.text


# ---- the manifest ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "dcp"])
def test_every_checkpoint_carries_a_manifest_of_all_its_files(tmp_path, fmt):
    run = _crashed(tmp_path, fmt)
    for ckpt in list_checkpoints(run):
        manifest = json.loads((ckpt / MANIFEST).read_text())
        assert manifest["version"] == 1 and manifest["algorithm"] == "sha256"
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert set(manifest["files"]) == on_disk and "state.json" in on_disk
        for rel, entry in manifest["files"].items():
            data = (ckpt / rel).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert verify_checkpoint(ckpt) == []
    if fmt == "dcp":
        assert {"dcp/.metadata", "train.pt", "rng-rank0.pt"} <= set(manifest["files"])
    else:
        assert {"model.safetensors", "optim.pt"} <= set(manifest["files"])


# ---- resume falls back to the newest intact checkpoint --------------------------------------------------------------
def test_truncated_model_falls_back_to_the_previous_checkpoint_bit_exact(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    _truncate(_ckpt(run, 4) / "model.safetensors")
    losses, text = _resume_warnings(caplog, run)
    assert re.search(r"checkpoint \S*step-00000004 is broken: model\.safetensors is \d+ bytes, the manifest says "
                     r"\d+ \(truncated\)", text)
    assert re.search(r"resuming from \S*step-00000002", text)
    assert losses == reference  # steps 1-2 from the first run, 3-6 resumed from step 2: every loss bit for bit


def test_same_size_corruption_of_optim_pt_is_caught_by_its_checksum(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    f = _ckpt(run, 4) / "optim.pt"
    size = f.stat().st_size
    _flip(f)
    assert f.stat().st_size == size
    assert verify_checkpoint(_ckpt(run, 4), checksums=False) == []  # sizes alone do not see it
    assert verify_checkpoint(_ckpt(run, 4)) == [
        "optim.pt does not match its SHA-256 in the manifest (corrupt: its bytes changed after it was written)"]
    losses, text = _resume_warnings(caplog, run)
    assert "step-00000004 is broken: optim.pt does not match its SHA-256" in text
    assert losses == reference


def test_truncated_state_json_falls_back(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    _truncate(_ckpt(run, 4) / "state.json", keep=0.9)
    losses, text = _resume_warnings(caplog, run)
    assert "step-00000004 is broken: state.json is" in text and "(truncated)" in text
    assert losses == reference


def test_a_missing_file_falls_back(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    (_ckpt(run, 4) / "optim.pt").unlink()
    losses, text = _resume_warnings(caplog, run)
    assert "step-00000004 is broken: optim.pt is missing" in text
    assert losses == reference


def test_dcp_checkpoint_with_a_truncated_shard_falls_back(tmp_path, caplog, reference):
    run = _crashed(tmp_path, fmt="dcp")
    shard = next((_ckpt(run, 4) / "dcp").glob("*.distcp"))
    _truncate(shard)
    with caplog.at_level(logging.INFO, logger="ptmkit"):
        losses = _run(run, resume=True, fmt="dcp")
    assert re.search(r"step-00000004 is broken: dcp/\S+\.distcp is \d+ bytes, the manifest says \d+", caplog.text)
    assert losses == reference  # the format does not change the run: the same losses as the safetensors one


def test_when_every_checkpoint_is_broken_the_error_names_each_and_the_fix(tmp_path, caplog):
    run = _crashed(tmp_path)
    _truncate(_ckpt(run, 4) / "model.safetensors")
    _flip(_ckpt(run, 2) / "optim.pt")
    with pytest.raises(BrokenCheckpointError) as err:
        _run(run, resume=True)
    msg = str(err.value)
    assert str(run / "checkpoints") in msg
    assert re.search(r"step-00000004: model\.safetensors is \d+ bytes, the manifest says \d+ \(truncated\)", msg)
    assert "step-00000002: optim.pt does not match its SHA-256" in msg
    assert "without --resume" in msg and "--overwrite" in msg and "restore" in msg


def test_a_checkpoint_written_before_manifests_still_resumes(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    for ckpt in list_checkpoints(run):
        (ckpt / MANIFEST).unlink()
    losses, text = _resume_warnings(caplog, run)
    assert re.search(r"checkpoint \S*step-00000004 predates checkpoint manifests", text)
    assert losses == reference


def test_a_truncated_pre_manifest_checkpoint_is_found_by_its_structure(tmp_path, caplog, reference):
    run = _crashed(tmp_path)
    for ckpt in list_checkpoints(run):
        (ckpt / MANIFEST).unlink()
    _truncate(_ckpt(run, 4) / "optim.pt")
    losses, text = _resume_warnings(caplog, run)
    assert "step-00000004 is broken: optim.pt is truncated or corrupt" in text
    assert losses == reference


def test_rotation_after_a_fallback_never_deletes_the_intact_checkpoint(tmp_path):
    """Resumed from step 2 past a broken step 4 with keep_last=1: the new step 3 stays beside the broken 4 (which
    the run replaces when it writes step 4 again)."""
    for step in (2, 3, 4):
        d = _ckpt(tmp_path, step)
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step}))
    rotate(tmp_path, 3, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_no_checkpoint_at_all_is_still_reported_as_such(tmp_path):
    assert newest_intact_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        _run(tmp_path / "run", resume=True)


# ---- every load names the file --------------------------------------------------------------------------------------
def _trainer_parts(run: Path):
    t = Trainer(_model(), CausalLM(), _batches(), run, TrainConfig(steps=STEPS, precision="fp32", progress_bar=False),
                OptimConfig(lr=3e-3), ScheduleConfig(warmup_steps=2))
    t.setup(resume=False)
    return t


@pytest.mark.parametrize("name, damage, detail", [
    ("model.safetensors", _truncate, "SafetensorError"),
    ("optim.pt", _truncate, "RuntimeError: PytorchStreamReader failed"),
    ("state.json", lambda f: _truncate(f, 0.9), "JSONDecodeError"),
])
def test_load_checkpoint_names_a_truncated_file(tmp_path, name, damage, detail):
    run = _crashed(tmp_path)
    f = _ckpt(run, 4) / name
    damage(f)
    t = _trainer_parts(tmp_path / "other")
    with pytest.raises(BrokenCheckpointError) as err:  # load_checkpoint itself, without the manifest's check
        load_checkpoint(_ckpt(run, 4), t.model, t.optimizer, t.scheduler, t.precision)
    msg = str(err.value)
    assert msg.startswith(f"{f}: truncated or corrupt ({detail}") and "restore the file" in msg


def test_load_dcp_checkpoint_names_a_truncated_file(tmp_path):
    run = _crashed(tmp_path, fmt="dcp")
    t = _trainer_parts(tmp_path / "other")
    _truncate(_ckpt(run, 4) / "train.pt")
    with pytest.raises(BrokenCheckpointError, match=re.escape(str(_ckpt(run, 4) / "train.pt")) + ": truncated"):
        load_dcp_checkpoint(_ckpt(run, 4), t.module, t.optimizer, t.scheduler, t.precision)
    _truncate(next((_ckpt(run, 2) / "dcp").glob("*.distcp")))
    with pytest.raises(BrokenCheckpointError, match=re.escape(str(_ckpt(run, 2) / "dcp")) + ": could not be read"):
        load_dcp_checkpoint(_ckpt(run, 2), t.module, t.optimizer, t.scheduler, t.precision)


def test_load_model_names_a_truncated_model_safetensors(tmp_path):
    save_model(_model(), tmp_path / "m")
    assert load_model(tmp_path / "m") is not None
    _truncate(tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "m")
    assert str(err.value).startswith(f"{tmp_path / 'm' / 'model.safetensors'}: truncated or corrupt (SafetensorError")
    assert "save the model directory again" in str(err.value)


# ---- export (`ptm convert RUN/checkpoints/step-N OUT`) verifies too -------------------------------------------------
from tests.integration.test_pretrain import _cfg, corpus  # noqa: E402, F401  (fixture)


@pytest.fixture(scope="module")
def pretrain_run(corpus, tmp_path_factory):  # noqa: F811
    from ptmkit.recipes.pretrain import pretrain

    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain(_cfg(corpus, out, train__steps=2, train__checkpoint_every=1, train__eval_every=0,
                  schedule__warmup_steps=1))
    return out


def test_export_of_a_broken_checkpoint_names_the_file(pretrain_run, tmp_path):
    from ptmkit.cli.main import main
    from ptmkit.recipes.pretrain import export_checkpoint

    good, bad = _ckpt(pretrain_run, 1), _ckpt(pretrain_run, 2)
    export_checkpoint(good, tmp_path / "ok")
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    _flip(bad / "model.safetensors")
    with pytest.raises(BrokenCheckpointError, match=re.escape(f"checkpoint {bad} is broken: model.safetensors does "
                                                              "not match its SHA-256")):
        export_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(bad), str(tmp_path / "cli")]) == 2  # the CLI reports it as an error, no traceback
    (bad / MANIFEST).unlink()  # a pre-manifest checkpoint: still named, by the read itself
    _truncate(bad / "model.safetensors")
    with pytest.raises(BrokenCheckpointError, match="model.safetensors is truncated or corrupt"):
        export_checkpoint(bad, tmp_path / "out")
