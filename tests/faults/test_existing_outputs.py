"""Nothing a user has is overwritten without asking: commands refuse a folder that holds a run, a model or a
tokenizer (leaving it byte for byte as it was), replace it whole with --overwrite, and a refused command writes
nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ptmkit.cli.main import main
from ptmkit.config import ConfigError
from ptmkit.recipes.pretrain import pretrain
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (fixture)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash (and every empty folder)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("runs") / "run"
    pretrain(_cfg(corpus, out, train__steps=6, train__checkpoint_every=3, train__eval_every=3))
    return out


def test_a_finished_run_is_refused_without_resume_or_overwrite(corpus, finished_run):  # noqa: F811
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=r"already holds a pre-training run.*--resume.*--overwrite"):
        pretrain(_cfg(corpus, finished_run, train__steps=4))
    with pytest.raises(ConfigError, match="choose one"):
        pretrain(_cfg(corpus, finished_run), resume=True, overwrite=True)
    assert snapshot(finished_run) == before


def test_a_refused_command_leaves_the_folder_byte_for_byte(corpus, finished_run):  # noqa: F811
    before = snapshot(finished_run)
    # refused after the folder check: a sequence longer than the model's positions
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        pretrain(_cfg(corpus, finished_run, data__seq_len=128), overwrite=True)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        pretrain(_cfg(corpus, finished_run, data__seq_len=128), resume=True)
    assert snapshot(finished_run) == before


def test_overwrite_replaces_the_run_as_a_whole(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    pretrain(_cfg(corpus, out, train__steps=9, train__checkpoint_every=3, train__keep_last=5))
    assert len(list((out / "checkpoints").iterdir())) == 3
    pretrain(_cfg(corpus, out, train__steps=2, train__checkpoint_every=2, schedule__warmup_steps=1), overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no old checkpoint left
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_cli_tokenizer_and_convert_refuse_existing_outputs(corpus, finished_run, tmp_path, capsys):  # noqa: F811
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n" * 50)
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(text), "--kind", "wordpiece", "--vocab-size", "60",
                 "--out", str(tok)]) == 0
    before = snapshot(tok)
    assert main(["tokenizer", "train", "--input", str(text), "--kind", "bpe", "--vocab-size", "300",
                 "--out", str(tok)]) == 2
    assert "already holds a tokenizer" in capsys.readouterr().err and snapshot(tok) == before
    assert main(["tokenizer", "train", "--input", str(text), "--kind", "bpe", "--vocab-size", "300",
                 "--out", str(tok), "--overwrite"]) == 0
    assert not (tok / "vocab.txt").exists()  # the WordPiece files went with the old tokenizer

    dst = tmp_path / "converted"
    assert main(["convert", str(finished_run / "model"), str(dst)]) == 0
    (dst / "finetune_task.json").write_text("{}")  # as a fine-tuned model directory would hold
    before = snapshot(dst)
    assert main(["convert", str(finished_run / "model"), str(dst)]) == 2
    assert "already holds a model" in capsys.readouterr().err and snapshot(dst) == before
    assert main(["convert", str(finished_run / "model"), str(dst), "--overwrite"]) == 0
    assert not (dst / "finetune_task.json").exists()  # no stale file from the replaced model
    ckpt = sorted((finished_run / "checkpoints").iterdir())[-1]
    assert main(["convert", str(ckpt), str(dst)]) == 2
    assert main(["convert", str(ckpt), str(dst), "--overwrite"]) == 0
    assert (dst / "model.safetensors").is_file()
