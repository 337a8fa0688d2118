"""`ptm finetune --teacher T --distill M`: the student trains on the one engine against a frozen teacher that is
never saved, starts from the teacher's layers when asked, and bad combinations are errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ptmkit.cli import finetune as cli_finetune
from ptmkit.cli.main import build_parser
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.recipes.finetune import finetune
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir, tiny_model  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def teacher(tiny_model, sst_dir, tmp_path_factory):  # noqa: F811
    """A 2-layer BERT fine-tuned on the toy SST-2."""
    base = tmp_path_factory.mktemp("teacher") / "base"
    cfg = make_config("bert", dict(vocab_size=Tokenizer.load(tiny_model).vocab_size, hidden_size=32, num_layers=2,
                                   num_heads=2, intermediate_size=64, max_position_embeddings=64, dropout=0.0,
                                   attention_dropout=0.0))
    torch.manual_seed(1)
    save_model(build_model("bert", cfg), base)
    Tokenizer.load(tiny_model).save(base)
    out = base.parent / "run"
    finetune(_cfg(base, sst_dir, out, epochs=4.0))
    return out / "best"


@pytest.mark.parametrize("method", ["distilbert", "pkd", "tinybert", "minilm"])
def test_a_student_distils_from_its_teachers_layers(method, teacher, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "student"
    before = (teacher / "model.safetensors").read_bytes()
    res = finetune(_cfg(teacher, sst_dir, out, teacher=str(teacher), distill=method, student_layers=1, epochs=2.0,
                        lr=3e-3, checkpoint_every=4))
    student = load_model(out / "best")
    assert student.backbone.config.num_layers == 1 and res["parameters"]["total"] < sum(
        p.numel() for p in load_model(teacher).parameters())
    assert (teacher / "model.safetensors").read_bytes() == before  # the teacher is never written
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    assert train and all("hard_loss" in r for r in train)
    # neither the saved student nor a training checkpoint holds the teacher
    ckpts = sorted((out / "checkpoints").glob("*/*.safetensors"))
    assert ckpts
    for f in [out / "best" / "model.safetensors", *ckpts]:
        with safe_open(str(f), "pt") as st:
            assert not any("teacher" in k for k in st.keys()), f
            if f.parent.name != "best":
                assert max(int(k.split("layers.")[1].split(".")[0]) for k in st.keys() if "layers." in k) == 0


def test_distillation_lowers_its_loss(teacher, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "student"
    finetune(_cfg(teacher, sst_dir, out, teacher=str(teacher), distill="minilm", student_layers=1, epochs=6.0,
                  lr=3e-3, distill_options={"hard_weight": 0.0}))
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    first, last = train[0]["relation_qk_loss"], train[-1]["relation_qk_loss"]
    assert last < first, (first, last)


def test_distillation_options_come_from_dotted_flags(teacher, tmp_path):
    parser = build_parser()
    args, extra = parser.parse_known_args(["finetune", str(teacher), "--task", "sst2", "--out", str(tmp_path),
                                           "--teacher", str(teacher), "--distill", "tinybert", "--student-layers",
                                           "1", "--tinybert.stage", "prediction"])
    args.overrides = extra
    cfg = cli_finetune.config_from_args(args)
    assert cfg.distill == "tinybert" and cfg.distill_options == {"stage": "prediction"} and cfg.student_layers == 1


def test_bad_distillation_settings_are_errors(teacher, sst_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="needs both teacher"):
        _cfg(teacher, sst_dir, tmp_path, teacher=str(teacher))
    with pytest.raises(ConfigError, match="unknown distillation method"):
        _cfg(teacher, sst_dir, tmp_path, teacher=str(teacher), distill="distilgpt")
    with pytest.raises(ConfigError, match="tmperature"):
        _cfg(teacher, sst_dir, tmp_path, teacher=str(teacher), distill="pkd", distill_options={"tmperature": 3})
    with pytest.raises(ConfigError, match="does not combine"):
        _cfg(teacher, sst_dir, tmp_path, teacher=str(teacher), distill="pkd", method="lora")
    with pytest.raises(ConfigError, match="student_layers must be >= 1"):
        _cfg(teacher, sst_dir, tmp_path, student_layers=0)
    with pytest.raises(ConfigError, match="1 to 2 layers"):
        finetune(_cfg(teacher, sst_dir, tmp_path / "x", teacher=str(teacher), distill="pkd", student_layers=3))
