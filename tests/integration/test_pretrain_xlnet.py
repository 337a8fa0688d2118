"""Tiny end-to-end XLNet pre-training with the permutation LM (`plm`): loss falls, the saved model directory is a
transformers XLNetLMHeadModel that reproduces our logits."""

from __future__ import annotations

import torch
import transformers as T

from ptmkit.models import load_model
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (module-scoped corpus fixture)


def test_xlnet_plm_pretraining(corpus, tmp_path):  # noqa: F811
    cfg = _cfg(corpus, tmp_path / "run", model__family="xlnet",
               model__config={"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
               objective__name="plm", data__boundary="mask", optim__lr=3e-3)
    summary = pretrain(cfg)
    train = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(train) == 30 and sum(train[-5:]) / 5 < 0.8 * sum(train[:5]) / 5, train
    ours = load_model(summary["model_dir"]).eval()
    ref = T.XLNetLMHeadModel.from_pretrained(summary["model_dir"]).eval()
    ids = torch.randint(5, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
