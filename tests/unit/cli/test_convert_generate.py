"""`ptm convert` and `ptm generate` end to end on a tiny GPT-2 with the real GPT-2 tokenizer files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T

from ptmkit.cli.main import main


@pytest.fixture
def hf_gpt2(tmp_path, data_dir):
    cfg = T.GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    T.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(data_dir / "tokenizers" / "gpt2" / name, tmp_path / "hf" / name)
    return tmp_path / "hf"


def test_convert_then_generate(tmp_path, hf_gpt2, capsys):
    assert main(["convert", str(hf_gpt2), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel" in out and "vocab.json" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gpt2"
    assert main(["generate", str(tmp_path / "out"), "--prompt", "Hello world", "--prompt", "A",
                 "--max-new-tokens", "5", "--stop", "<|endoftext|>"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Hello world") and lines[1].startswith("A")
    # the greedy text equals transformers' own greedy continuation
    ref = T.GPT2LMHeadModel.from_pretrained(hf_gpt2).eval()
    tok = T.GPT2TokenizerFast.from_pretrained(hf_gpt2)
    ids = tok("Hello world", return_tensors="pt").input_ids
    want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                        pad_token_id=50256, eos_token_id=50256)
    assert lines[0] == tok.decode(want[0], skip_special_tokens=True)


def test_cli_errors_are_messages_not_tracebacks(tmp_path, hf_gpt2, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    main(["convert", str(hf_gpt2), str(tmp_path / "out")])
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "out"), "--prompt", "x", "--stop", "NOT_A_TOKEN"]) == 2
    assert "not in the tokenizer" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "out"), "--prompt", "x", "--temperature", "-1"]) == 2


def test_help_documents_every_option(capsys):
    for cmd in ("convert", "generate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--" in text and "default" in text
