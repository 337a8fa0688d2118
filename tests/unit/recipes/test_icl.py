"""`ptm icl`: k-shot prompting of a causal LM, on a tiny LLaMA with a byte-level BPE tokenizer trained on the
synthetic sentiment sentences of test_finetune. The cached-prefix scorer must equal scoring each full prompt alone;
calibration, seeding, outputs and the bad inputs of templates and verbalizers are checked."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ptmkit.adapt.prompts import Template, Verbalizer
from ptmkit.cli.main import main
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.recipes.icl import ICLConfig, PromptScorer, icl
from ptmkit.train.precision import Precision
from tests.unit.recipes.test_finetune import FILL, NEG, POS, _sentence, sst_dir  # noqa: F401  (fixture)

TEMPLATE = "Review: {text_a}\nSentiment: {mask}"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    rng = random.Random(0)
    texts = [f"Review: {_sentence(rng, i % 2)}\nSentiment: {'good' if i % 2 else 'bad'}" for i in range(300)]
    tok = Tokenizer.train(texts, "bpe", vocab_size=300, min_frequency=1)
    cfg = make_config("llama", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                                    num_kv_heads=2, intermediate_size=64, max_position_embeddings=512))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lm") / "model"
    save_model(build_model("llama", cfg, "causal-lm"), path)
    tok.save(path)
    return path


def test_the_shared_prefix_cache_gives_each_full_prompts_scores(tiny_lm):
    model = load_model(tiny_lm).eval()
    tok = Tokenizer.load(tiny_lm)
    label_ids = Verbalizer(["bad", "good"], tok, space=" ").ids
    scorer = PromptScorer(model, label_ids, 0, Precision("fp32", torch.device("cpu")), torch.device("cpu"))
    prefix = tok.encode("Review: the movie was good\nSentiment: good\n\n", add_special_tokens=False)
    queries = [tok.encode(t, add_special_tokens=False) for t in
               ["Review: a film\nSentiment:", "Review: the plot was really awful today\nSentiment:"]]
    shared = scorer(prefix, queries)
    for i, q in enumerate(queries):
        alone = model(torch.tensor([prefix + q])).logits[0, -1].float().log_softmax(-1)[label_ids]
        torch.testing.assert_close(shared[i], alone, atol=1e-5, rtol=1e-5)


def test_icl_writes_its_table_and_is_seeded(tiny_lm, sst_dir, tmp_path):  # noqa: F811
    kw = dict(model=str(tiny_lm), task="sst2", data_dir=str(sst_dir), template=TEMPLATE, verbalizer="bad,good",
              shots=[0, 2, 4], seeds=[0, 1], precision="fp32", show_progress=False)
    res = icl(ICLConfig(out=str(tmp_path / "a"), **kw))
    assert set(res["shots"]) == {"0", "2", "4"} and res["shots"]["0"]["accuracy"]["runs"] == 1
    assert res["shots"]["4"]["accuracy"]["runs"] == 2 and 0 <= res["majority_baseline_accuracy"] <= 1
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(len(r["demonstrations"]) == r["shots"] for r in lines)
    assert abs(sum(lines[-1]["content_free_probs"]) - 1) < 1e-3
    assert (tmp_path / "a" / "icl.png").stat().st_size > 0
    again = icl(ICLConfig(out=str(tmp_path / "b"), **kw))
    assert again["shots"] == res["shots"]  # the same seeds draw the same demonstrations
    with pytest.raises(ConfigError, match="already holds"):
        icl(ICLConfig(out=str(tmp_path / "a"), **kw))


def test_icl_resumes_an_interrupted_evaluation(tiny_lm, sst_dir, tmp_path):  # noqa: F811
    """Resume keeps the finished (k, seed) runs, scores only the others, and gives what one whole run gives."""
    kw = dict(model=str(tiny_lm), task="sst2", data_dir=str(sst_dir), template=TEMPLATE, verbalizer="bad,good",
              shots=[0, 2, 4], seeds=[0, 1], precision="fp32", show_progress=False)
    whole = icl(ICLConfig(out=str(tmp_path / "whole"), **kw))
    out = tmp_path / "cut"
    icl(ICLConfig(out=str(out), **kw))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # stopped during the fourth run: three whole lines and a torn one; no results.json
    (out / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    (out / "results.json").unlink()
    with pytest.raises(ConfigError, match="already holds.*--resume"):
        icl(ICLConfig(out=str(out), **kw))
    res = icl(ICLConfig(out=str(out), **{**kw, "show_progress": True}), resume=True)
    assert res["resumed_runs"] == 3 and res["shots"] == whole["shots"]
    assert (out / "metrics.jsonl").read_text().splitlines() == lines
    with pytest.raises(ConfigError, match=r"other settings: seeds=\[0, 1\] \(now \[0, 2\]\)"):
        icl(ICLConfig(out=str(out), **{**kw, "seeds": [0, 2]}), resume=True)
    with pytest.raises(ConfigError, match="config.json missing"):
        icl(ICLConfig(out=str(tmp_path / "none"), **kw), resume=True)


def test_icl_command(tiny_lm, sst_dir, tmp_path, capsys):  # noqa: F811
    code = main(["icl", str(tiny_lm), "--task", "sst2", "--data-dir", str(sst_dir), "--out", str(tmp_path / "r"),
                 "--template", "Review: {text_a}\\nSentiment: {mask}", "--verbalizer", "bad,good", "--shots", "0,1",
                 "--seeds", "0", "--precision", "fp32", "--no-progress"])
    assert code == 0
    assert "calibrated" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["template"] == TEMPLATE
    # --resume on a finished evaluation keeps all its runs and scores none again
    assert main(["icl", str(tiny_lm), "--task", "sst2", "--data-dir", str(sst_dir), "--out", str(tmp_path / "r"),
                 "--template", "Review: {text_a}\\nSentiment: {mask}", "--verbalizer", "bad,good", "--shots", "0,1",
                 "--seeds", "0", "--precision", "fp32", "--no-progress", "--resume"]) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["resumed_runs"] == 2


def test_templates_and_verbalizers_refuse_bad_input(tiny_lm):
    with pytest.raises(ConfigError, match="slot {mask} exactly once"):
        Template("{text_a} It was good.")
    with pytest.raises(ConfigError, match="unknown field"):
        Template("{sentence} It was {mask}.")
    with pytest.raises(ConfigError, match="must end the template"):
        Template("{mask} is what {text_a} was").before_slot("x")
    tok = Tokenizer.load(tiny_lm)
    with pytest.raises(ConfigError, match="is [0-9]+ tokens"):
        Verbalizer(["bad", "extraordinarily"], tok, space=" ")
    with pytest.raises(ConfigError, match="one word per class"):
        Verbalizer(["bad"], tok, space=" ", names=["negative", "positive"])


def test_icl_needs_a_causal_lm(sst_dir, tmp_path):  # noqa: F811
    from tests.unit.recipes.test_finetune import tiny_model  # noqa: F401
    cfg = make_config("bert", dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    tok = Tokenizer.train(["good bad movie"] * 5, "wordpiece", vocab_size=50, min_frequency=1)
    path = tmp_path / "bert"
    save_model(build_model("bert", cfg, "masked-lm"), path)
    tok.save(path)
    with pytest.raises(ConfigError, match="prompts a causal LM"):
        icl(ICLConfig(model=str(path), task="sst2", data_dir=str(sst_dir), out=str(tmp_path / "o"),
                      template=TEMPLATE, verbalizer="bad,good", shots=[0], show_progress=False))


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_the_shared_prefix_cache_works_with_adapters(tiny_lm, method):
    """A model carrying a soft prompt, a prefix or LoRA scores each query as its full prompt alone would."""
    from ptmkit import adapt
    from tests.contracts.test_delta_methods import _perturb

    model = load_model(tiny_lm).eval()
    adapt.apply(model, method, {"num_virtual_tokens": 3} if method != "lora" else None)
    _perturb(model)
    tok = Tokenizer.load(tiny_lm)
    label_ids = Verbalizer(["bad", "good"], tok, space=" ").ids
    scorer = PromptScorer(model, label_ids, 0, Precision("fp32", torch.device("cpu")), torch.device("cpu"))
    prefix = tok.encode("Review: the movie was good\nSentiment: good\n\n", add_special_tokens=False)
    queries = [tok.encode(t, add_special_tokens=False) for t in ["Review: a film\nSentiment:", "Review: bad\nSentiment:"]]
    shared = scorer(prefix, queries)
    for i, q in enumerate(queries):
        alone = model(torch.tensor([prefix + q])).logits[0, -1].float().log_softmax(-1)[label_ids]
        torch.testing.assert_close(shared[i], alone, atol=1e-5, rtol=1e-5)


def test_icl_reads_a_users_own_headerless_gzipped_table(tiny_lm, tmp_path):
    """Not only GLUE: a header-less, gzipped CSV with its column names given, labels as words."""
    import gzip

    rng = random.Random(4)
    for split, n in (("train", 12), ("dev", 10)):
        rows = [f"{'good' if i % 2 else 'bad'},{_sentence(rng, i % 2)}" for i in range(n)]
        with gzip.open(tmp_path / f"{split}.csv.gz", "wt") as f:
            f.write("\n".join(rows) + "\n")
    res = icl(ICLConfig(model=str(tiny_lm), task="table", data_dir=str(tmp_path), out=str(tmp_path / "out"),
                        columns=["label", "text"], text_fields=["text"], label_field="label", template=TEMPLATE,
                        verbalizer="bad,good", shots=[0, 2], seeds=[0], precision="fp32", show_progress=False))
    assert res["eval_examples"] == 10 and res["verbalizer"] == {"bad": "bad", "good": "good"}
