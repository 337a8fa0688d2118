"""Tiny end-to-end ELECTRA pre-training (objective rtd): the generator is optimised and checkpointed with the model,
a Ctrl-C + --resume run is bit-exact, and both exported models load in transformers."""

from __future__ import annotations


import torch

from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain
from tests.integration.resume import interrupt_then_resume, train_losses
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (corpus is a pytest fixture)

ELECTRA = {"family": "electra", "config": {"embedding_size": 32, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                           "intermediate_size": 128, "max_position_embeddings": 64}}


def _rtd(corpus, out, steps):  # noqa: F811
    return _cfg(corpus, out, model__family="electra", model__config=ELECTRA["config"], objective__name="rtd",
                train__steps=steps, train__checkpoint_every=100)


def test_rtd_pretraining_resumes_bit_exact_and_exports_both_models(corpus, tmp_path, monkeypatch):  # noqa: F811
    full = tmp_path / "full"
    summary = pretrain(_rtd(corpus, full, 8))
    want = [r["loss"] for r in read_metrics(full) if r["split"] == "train"]
    assert {"mlm_loss", "rtd_loss", "rtd_accuracy", "replaced_fraction"} <= set(read_metrics(full)[0])
    assert (full / "checkpoints" / "step-00000008" / "objective.safetensors").exists()

    import transformers as T

    disc = T.ElectraForPreTraining.from_pretrained(summary["model_dir"]).eval()
    gen = T.ElectraForMaskedLM.from_pretrained(summary["generator_dir"]).eval()
    assert gen.config.hidden_size == 16 and gen.config.embedding_size == disc.config.embedding_size == 32
    # the generator's embeddings are the discriminator's (ELECTRA §3.2)
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, disc.electra.embeddings.word_embeddings.weight)

    part = tmp_path / "part"
    summary, _ = interrupt_then_resume(_rtd(corpus, part, 8), monkeypatch, sigint_at_batch=3)
    assert summary["steps"] == 4
    got = train_losses(part)
    assert got == want  # bit for bit: the generator's weights and Adam state came back too
