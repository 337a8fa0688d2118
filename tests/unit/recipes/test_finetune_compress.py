"""`ptm finetune --compress M`: pruning on a schedule and quantisation-aware training ride the one engine; best/
holds the deployable model (plain pruned weights, or the int8 model) and scores as the run reported."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.cli import finetune as cli_finetune
from ptmkit.cli.main import build_parser
from ptmkit.config import ConfigError
from ptmkit.recipes.evaluate import evaluate
from ptmkit.recipes.finetune import finetune
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir  # noqa: F401  (fixtures)
from tests.unit.recipes.test_finetune_distill import teacher, tiny_model  # noqa: F401  (a fine-tuned 2-layer BERT)


def _block_sparsity(path) -> float:
    sd = load_file(path / "model.safetensors")
    ws = [v for k, v in sd.items() if ".layer." in k and k.endswith("weight") and v.dim() == 2]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


@pytest.mark.parametrize("method,options", [
    ("gradual-magnitude", {"schedule": {"final": 0.6, "end": 8, "every": 2}}),
    ("movement", {"schedule": {"final": 0.5, "end": 8, "every": 1}}),
])
def test_pruning_while_fine_tuning_saves_the_pruned_model(method, options, teacher, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = finetune(_cfg(teacher, sst_dir, out, compress=method, compress_options=options, epochs=4.0, lr=1e-3,
                        eval_every=4))
    assert res["best_step"] >= 8  # before the schedule ends, a less sparse model could be the best one
    assert _block_sparsity(out / "best") == pytest.approx(options["schedule"]["final"], abs=0.01)
    again = evaluate(out / "best", data_dir=sst_dir, precision="fp32", show_progress=False)
    assert again["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])


def test_quantisation_aware_training_saves_the_int8_model(teacher, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = finetune(_cfg(teacher, sst_dir, out, compress="qat-int8", epochs=2.0, lr=1e-3))
    cfg = json.loads((out / "best" / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == "qat-int8"
    again = evaluate(out / "best", data_dir=sst_dir, precision="fp32", show_progress=False)
    # the int8 model computes what the fake-quantised one did, up to int8 rounding of the activations
    assert abs(again["metrics"]["accuracy"] - res["dev"]["accuracy"]) <= 0.05


def test_compress_options_come_from_dotted_flags_and_bad_ones_are_errors(teacher, sst_dir, tmp_path):  # noqa: F811
    parser = build_parser()
    args, extra = parser.parse_known_args(["finetune", str(teacher), "--task", "sst2", "--out", str(tmp_path),
                                           "--compress", "gradual-magnitude", "--gradual-magnitude.schedule",
                                           "{final: 0.5, end: 10}"])
    args.overrides = extra
    cfg = cli_finetune.config_from_args(args)
    assert cfg.compress_options == {"schedule": {"final": 0.5, "end": 10}}
    with pytest.raises(ConfigError, match="not a method that trains"):
        _cfg(teacher, sst_dir, tmp_path, compress="magnitude")
    with pytest.raises(ConfigError, match="end"):
        _cfg(teacher, sst_dir, tmp_path, compress="gradual-magnitude",
             compress_options={"schedule": {"final": 0.5, "end": -1, "start": 0}})
    with pytest.raises(ConfigError, match="does not combine"):
        _cfg(teacher, sst_dir, tmp_path, compress="qat-int8", method="lora")
    with pytest.raises(ConfigError, match="without compress"):
        _cfg(teacher, sst_dir, tmp_path, compress_options={"schedule": {}})
    assert torch.get_num_threads() >= 1


def test_lottery_tickets_rewind_and_compare_with_random_masks(teacher, sst_dir, tmp_path):  # noqa: F811
    from ptmkit.recipes import analyze

    base = tmp_path / "pre"  # the 'pre-trained' model: the teacher's weights with its head
    import shutil
    shutil.copytree(teacher, base)
    r = analyze.lottery(base, tmp_path / "lt", "sst2", rounds=2, prune_per_round=0.5, data_dir=sst_dir,
                        finetune_options={"epochs": 2.0, "lr": 1e-3, "batch_size": 16, "max_length": 32,
                                          "precision": "fp32"})
    assert [c["sparsity"] for c in r["curve"]] == [0.0, 0.5, 0.75] and all("random" in c for c in r["curve"])
    assert _block_sparsity(tmp_path / "lt" / "ticket-2" / "best") == pytest.approx(0.75, abs=0.01)
    assert _block_sparsity(tmp_path / "lt" / "random-2" / "best") == pytest.approx(0.75, abs=0.01)
    assert (tmp_path / "lt" / "lottery.png").is_file()
