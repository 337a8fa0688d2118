"""Bad input and refused writes end in a message that names the problem and the fix, never a raw traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from ptmkit.cli.main import main
from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config, save_model
from ptmkit.recipes.pretrain import DataSection


def test_zero_batch_size_is_a_config_error():
    with pytest.raises(ConfigError, match="data.batch_size must be an integer >= 1, got 0"):
        from_dict(DataSection, {"batch_size": 0})
    with pytest.raises(ConfigError, match="data.seq_len must be an integer >= 2"):
        from_dict(DataSection, {"seq_len": 1})


def test_finetune_max_steps_zero_is_refused(capsys):
    assert main(["finetune", "m", "--task", "sst2", "--out", "o", "--max-steps", "0"]) == 2
    assert "max_steps=0" in capsys.readouterr().err


def test_generate_from_an_empty_prompt_starts_at_bos(tmp_path, capsys):
    from ptmkit.data.tokenizer import Tokenizer

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log\n" * 20)
    tok = Tokenizer.train(str(text), "bpe", vocab_size=300)
    cfg = make_config("gpt2", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                   max_position_embeddings=64, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))
    save_model(build_model("gpt2", cfg, "causal-lm"), tmp_path / "lm")
    tok.save(tmp_path / "lm")
    assert main(["generate", str(tmp_path / "lm"), "--prompt", "", "--prompt", "the cat", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 2 and "the cat" in out  # one continuation per prompt, the empty one included


def test_unsupported_model_type_lists_each_once():
    from ptmkit.models.io import _adapter_for

    with pytest.raises(ValueError, match="unsupported model_type 'nope'") as e:
        _adapter_for("nope")
    listed = str(e.value).split("supported: ")[1]
    assert listed.count("'t5'") == 1


def test_a_file_size_limit_is_a_message_and_leaves_no_torn_file(tmp_path):
    """`File too large` (RLIMIT_FSIZE in the child, as a full disk would) names the file and the fix."""
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n" * 200)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "tok"
    proc = subprocess.run([sys.executable, "-m", "ptmkit.cli", "tokenizer", "train", "--input", str(text), "--kind",
                           "bpe", "--vocab-size", "400", "--out", str(out)], preexec_fn=limit, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "file-size limit" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "tokenizer.json").exists()  # the atomic writer left no half-written file


def test_os_refusals_are_explained():
    import errno

    from ptmkit.cli.main import _os_advice

    assert "not writable" in _os_advice(OSError(errno.EACCES, "Permission denied", "/ro/run"))
    assert _os_advice(OSError(errno.EROFS, "Read-only file system", "/ro")).startswith("/ro: Read-only file system")
    assert "disk is full" in _os_advice(OSError(errno.ENOSPC, "No space left on device", "/x"))


def test_convert_warns_when_the_tokenizer_outgrows_the_model(tmp_path, capsys):
    from ptmkit.data.tokenizer import Tokenizer

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log\n" * 20)
    tok = Tokenizer.train(str(text), "wordpiece", vocab_size=60, min_frequency=1)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size - 5, hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    save_model(build_model("bert", cfg), tmp_path / "m")
    tok.save(tmp_path / "m")
    assert main(["convert", str(tmp_path / "m"), str(tmp_path / "out")]) == 0
    assert "the tokenizer has" in capsys.readouterr().err


def _tiny_model_dir(tmp_path):
    """A saved tiny BERT with a WordPiece tokenizer, and a two-split CSV table it can be fine-tuned on."""
    from ptmkit.data.tokenizer import Tokenizer

    rows = [("a good film", 1), ("a bad film", 0), ("good acting", 1), ("bad plot", 0)] * 4
    data = tmp_path / "table"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    tok = Tokenizer.train([t for t, _ in rows], "wordpiece", vocab_size=40, min_frequency=1)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=16))
    save_model(build_model("bert", cfg), tmp_path / "m")
    tok.save(tmp_path / "m")
    return tmp_path / "m", data


def test_finetune_and_convert_name_a_truncated_model_file(tmp_path, capsys):
    model, data = _tiny_model_dir(tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy that stopped early
    for argv, out in ((["finetune", str(model), "--task", "table", "--data-dir", str(data), "--out",
                        str(tmp_path / "run"), "--max-steps", "1"], tmp_path / "run"),
                      (["convert", str(model), str(tmp_path / "converted")], tmp_path / "converted")):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert f"{weights}: truncated or corrupt" in err and "save the model directory again" in err, err
        assert "Traceback" not in err and not out.exists()  # refused before anything was written


def test_bad_rows_advise_the_flag_the_command_takes(tmp_path, capsys):
    model, data = _tiny_model_dir(tmp_path)
    with (data / "train.csv").open("a") as f:
        f.write("a ragged row,1,extra\n")
    argv = ["finetune", str(model), "--task", "table", "--data-dir", str(data), "--max-steps", "1",
            "--precision", "fp32", "--no-progress", "--max-length", "16"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "train.csv:18" in err and "--skip-bad-rows" in err, err
    with pytest.warns(UserWarning, match="skipped 1 bad row"):  # the advice works as given
        assert main([*argv, "--out", str(tmp_path / "skipped"), "--skip-bad-rows"]) == 0
