"""`ptm finetune --method M`: every delta-tuning method trains on the one engine with the base model frozen, saves
itself as an adapter beside the best model (never into the base model's directory), and the saved run evaluates to
the score it reported."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from ptmkit import adapt
from ptmkit.cli import finetune as cli_finetune
from ptmkit.cli.main import build_parser
from ptmkit.config import ConfigError
from ptmkit.recipes.evaluate import evaluate, load_adapted
from ptmkit.recipes.finetune import finetune
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir, tiny_model  # noqa: F401  (fixtures)

OPTIONS = {"prefix": {"num_virtual_tokens": 4, "projection_hidden": 16}, "ptuning-v2": {"num_virtual_tokens": 4},
           "prompt": {"num_virtual_tokens": 4}, "ptuning": {"num_virtual_tokens": 4}, "lora": {"rank": 4},
           "houlsby": {"bottleneck": 8}, "pfeiffer": {"bottleneck": 8}}


# saved as PEFT saves it (the trained prompt, without the training-only encoder), so it loads as the plain form;
# an encoder's prefix is kept in ptmkit's own layout (PEFT's encoder prefixes shift positions) and loads as itself
LOADED_AS = {"ptuning": "prompt"}


def _digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("method", sorted(adapt.METHODS))
def test_every_method_finetunes_frozen_and_saves_an_adapter(method, tiny_model, sst_dir, tmp_path):  # noqa: F811
    before = _digest(tiny_model)
    out = tmp_path / "run"
    res = finetune(_cfg(tiny_model, sst_dir, out, method=method, method_options=OPTIONS.get(method, {}),
                        epochs=2.0, lr=1e-2))
    n = res["parameters"]
    assert res["method"] == method and 0 < n["trainable"] < n["total"]
    assert (out / "best" / "adapter" / "adapter_config.json").is_file()
    assert _digest(tiny_model) == before  # the base model's weights are never touched
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"split": "train"' in line]
    assert losses, "no training loss logged"
    scored = evaluate(out / "best", "sst2", sst_dir, "dev", tmp_path / "eval", show_progress=False)
    assert scored["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])
    model = load_adapted(out / "best")
    assert LOADED_AS.get(method, method) in adapt.base.applied(model)


def test_lora_lowers_the_training_loss(tiny_model, sst_dir, tmp_path):  # noqa: F811
    """The fixture's backbone is random and frozen here, so only the trend is asked for (the real-model scores are in
    docs/adaptation.md)."""
    out = tmp_path / "run"
    finetune(_cfg(tiny_model, sst_dir, out, method="lora", method_options={"rank": 8}))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"split": "train"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_frozen_weights_held_in_bf16_train_and_reload(tiny_model, sst_dir, tmp_path):  # noqa: F811
    """frozen_dtype='bf16': the frozen base is bf16, the method and the head stay fp32, the loss still falls, and the
    saved run scores what it reported."""
    from safetensors import safe_open

    out = tmp_path / "run"
    res = finetune(_cfg(tiny_model, sst_dir, out, method="lora", method_options={"rank": 8}, precision="bf16",
                        frozen_dtype="bf16"))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"split": "train"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    with safe_open(str(out / "best" / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    # saved in the Hugging Face layout: the head is BERT's pooler and classifier; everything else was frozen
    trained = {k for k, d in dtypes.items() if d == "F32"}
    assert trained == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert {d for k, d in dtypes.items() if k not in trained} == {"BF16"}
    scored = evaluate(out / "best", "sst2", sst_dir, "dev", tmp_path / "eval", show_progress=False)
    assert scored["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])


def test_method_options_come_from_dotted_flags(tiny_model, tmp_path):  # noqa: F811
    parser = build_parser()
    args, extra = parser.parse_known_args(["finetune", str(tiny_model), "--task", "sst2", "--out", str(tmp_path),
                                           "--method", "lora", "--lora.rank", "4", "--lora.targets", "[q, k]"])
    args.overrides = extra
    cfg = cli_finetune.config_from_args(args)
    assert cfg.method == "lora" and cfg.method_options == {"rank": 4, "targets": ["q", "k"]}
    args.overrides = ["--prefix.num_virtual_tokens", "4"]
    with pytest.raises(ConfigError, match="not an option of --method lora.*--method prefix"):
        cli_finetune.config_from_args(args)
    args.overrides = ["--lora.rnk", "4"]
    with pytest.raises(ConfigError, match="rnk"):
        cli_finetune.config_from_args(args)


def test_bad_method_settings_are_errors(tiny_model, sst_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="init='random'"):
        _cfg(tiny_model, sst_dir, tmp_path, method="lora", init="random")
    with pytest.raises(ConfigError, match="without a method"):
        _cfg(tiny_model, sst_dir, tmp_path, method_options={"rank": 4})
    with pytest.raises(ConfigError, match="unknown delta-tuning method"):
        _cfg(tiny_model, sst_dir, tmp_path, method="lorra")
    with pytest.raises(ConfigError, match="frozen_dtype='bf16'.*needs a delta method"):
        _cfg(tiny_model, sst_dir, tmp_path, frozen_dtype="bf16", precision="bf16")
    with pytest.raises(ConfigError, match="precision='bf16'"):
        _cfg(tiny_model, sst_dir, tmp_path, method="lora", frozen_dtype="bf16", precision="fp32")


def test_a_prompt_starts_from_its_text(tiny_model, sst_dir, tmp_path):  # noqa: F811
    from ptmkit.data.tokenizer import Tokenizer

    out = tmp_path / "run"
    finetune(_cfg(tiny_model, sst_dir, out, method="prompt", max_steps=1,
                  method_options={"num_virtual_tokens": 3, "init": "text", "init_text": "john said"}))
    sidecar = json.loads((out / "best" / "adapter" / "ptmkit_adapter.json").read_text())
    assert sidecar["config"]["init_ids"] == Tokenizer.load(tiny_model).encode("john said", add_special_tokens=False)


def test_merge_folds_lora_into_a_plain_model_that_scores_the_same(tiny_model, sst_dir, tmp_path):  # noqa: F811
    import torch
    import transformers as T

    from ptmkit.cli.main import main
    from ptmkit.models import load_model

    out = tmp_path / "run"
    res = finetune(_cfg(tiny_model, sst_dir, out, method="lora", method_options={"rank": 4}, epochs=2.0))
    assert main(["merge", str(out / "best"), "--out", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert not (merged / "adapter").exists()
    scored = evaluate(merged, "sst2", sst_dir, "dev", tmp_path / "eval", show_progress=False)
    assert scored["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])
    ids = torch.randint(5, 100, (2, 9))
    adapted = load_adapted(out / "best").eval()
    plain = load_model(merged).eval()
    assert not adapt.base.applied(plain)
    torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-4)
    hf = T.BertForSequenceClassification.from_pretrained(merged).eval()  # runs without ptmkit or peft
    torch.testing.assert_close(hf(input_ids=ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-4)
    # the run's best/ is never modified; an existing output needs --overwrite
    assert main(["merge", str(out / "best"), "--out", str(merged)]) == 2


def test_merging_an_adapter_that_is_no_change_of_weights_is_an_error(tiny_model, sst_dir, tmp_path):  # noqa: F811
    from ptmkit.recipes.merge import merge_adapter

    out = tmp_path / "run"
    finetune(_cfg(tiny_model, sst_dir, out, method="houlsby", method_options={"bottleneck": 4}, max_steps=1))
    with pytest.raises(ConfigError, match="houlsby cannot be merged"):
        merge_adapter(out / "best", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ConfigError, match="base model's directory"):
        merge_adapter(out / "best", out / "best")


def test_a_lora_run_resumes_bit_for_bit(tiny_model, sst_dir, tmp_path, monkeypatch):  # noqa: F811
    """Ctrl-C mid-run then --resume gives the uninterrupted run's losses and adapter: the delta parameters and their
    optimizer state travel in the engine's checkpoints."""
    import os
    import signal

    from safetensors.torch import load_file

    from ptmkit.data.task_batches import TaskBatches
    from ptmkit.train.logging import read_metrics

    run = dict(epochs=2.0, eval_every=4, checkpoint_every=3, log_every=1, method="lora",
               method_options={"rank": 4}, lr=3e-3)
    finetune(_cfg(tiny_model, sst_dir, tmp_path / "ref", **run))
    real_next = TaskBatches.__next__
    drawn = {"n": 0}

    def next_with_interrupt(self):
        drawn["n"] += 1
        if drawn["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(TaskBatches, "__next__", next_with_interrupt)
    cfg = _cfg(tiny_model, sst_dir, tmp_path / "cut", **run)
    assert finetune(cfg)["interrupted"]
    monkeypatch.setattr(TaskBatches, "__next__", real_next)
    finetune(cfg, resume=True)
    losses = [[r["loss"] for r in read_metrics(tmp_path / d) if r["split"] == "train"] for d in ("ref", "cut")]
    assert losses[0] == losses[1]
    a, b = (load_file(str(tmp_path / d / "best" / "adapter" / "adapter_model.safetensors")) for d in ("ref", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
