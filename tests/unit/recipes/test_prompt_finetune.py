"""Prompt-based fine-tuning (PET / LM-BFF) in `ptm finetune --template ... --verbalizer ...`: the LM's own head
scores the label words at the slot, with a masked LM and with a causal LM (+ LoRA: classification as generating the
label word), few-shot sets of K per class, and evaluation of the saved run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ptmkit.cli.main import main
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config, save_model
from ptmkit.recipes.evaluate import evaluate
from ptmkit.recipes.finetune import finetune
from tests.unit.recipes.test_finetune import _cfg, _one_thread, _sentence, sst_dir  # noqa: F401  (fixtures)
from tests.unit.recipes.test_icl import tiny_lm  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A BERT with its masked-LM head and a WordPiece tokenizer that has [MASK]."""
    rng = random.Random(0)
    tok = Tokenizer.train([_sentence(rng, i % 2) + " it was good bad" for i in range(200)], "wordpiece",
                          vocab_size=110, min_frequency=1)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, dropout=0.0,
                                   attention_dropout=0.0))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlm") / "model"
    save_model(build_model("bert", cfg, "masked-lm"), path)
    tok.save(path)
    return path


def test_masked_lm_prompt_finetuning_learns_and_evaluates(tiny_mlm, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = finetune(_cfg(tiny_mlm, sst_dir, out, template="{text_a} it was {mask} .", verbalizer=["bad", "good"]))
    assert res["dev"]["accuracy"] >= 0.9, res["dev"]
    info = json.loads((out / "best" / "finetune_task.json").read_text())
    assert info["template"] == "{text_a} it was {mask} ." and info["verbalizer"] == ["bad", "good"]
    assert json.loads((out / "best" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    scored = evaluate(out / "best", data_dir=sst_dir, show_progress=False)
    assert scored["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])


def test_causal_lm_with_lora_learns_to_generate_the_label_word(tiny_lm, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = finetune(_cfg(tiny_lm, sst_dir, out, template="Review: {text_a}\nSentiment: {mask}",
                        verbalizer=["bad", "good"], method="lora", method_options={"rank": 4}, epochs=4.0))
    assert res["parameters"]["trainable_pct"] < 20
    assert (out / "best" / "adapter" / "adapter_config.json").is_file()
    scored = evaluate(out / "best", data_dir=sst_dir, show_progress=False)
    assert scored["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])
    # what it learned is the next token: the classifier's class scores are the LM's next-token logits of the words
    from ptmkit.adapt.prompt_model import PromptClassifier
    from ptmkit.recipes.evaluate import load_adapted
    lm = load_adapted(out / "best").eval()
    tok = Tokenizer.load(out / "best")
    ids = torch.tensor([tok.encode("Review: the movie was good\nSentiment:", add_special_tokens=False)])
    words = [tok.encode(" " + w, add_special_tokens=False)[0] for w in ("bad", "good")]
    classifier = PromptClassifier(lm, words)
    torch.testing.assert_close(classifier(ids).logits[0], lm(ids).logits[0, -1, words])


def test_few_shot_draws_k_per_class(tiny_mlm, sst_dir, tmp_path):  # noqa: F811
    res = finetune(_cfg(tiny_mlm, sst_dir, tmp_path / "run", template="{text_a} it was {mask} .",
                        verbalizer=["bad", "good"], shots_per_class=4, max_steps=2))
    assert res["train_examples"] == 8


def test_prompt_settings_refuse_bad_input(tiny_mlm, tiny_lm, sst_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="needs both template and verbalizer"):
        _cfg(tiny_mlm, sst_dir, tmp_path, template="{text_a} it was {mask} .")
    with pytest.raises(ConfigError, match="exactly once"):
        _cfg(tiny_mlm, sst_dir, tmp_path, template="{text_a} it was good .", verbalizer=["bad", "good"])
    with pytest.raises(ConfigError, match="tokens"):
        finetune(_cfg(tiny_lm, sst_dir, tmp_path / "r", template="{text_a} it was {mask}",
                      verbalizer=["bad", "unbelievably"]))
    with pytest.raises(ConfigError, match="shots_per_class"):
        finetune(_cfg(tiny_mlm, sst_dir, tmp_path / "r2", template="{text_a} it was {mask} .",
                      verbalizer=["bad", "good"], shots_per_class=1000))


def test_prompt_finetuning_from_the_command_line(tiny_mlm, sst_dir, tmp_path):  # noqa: F811
    code = main(["finetune", str(tiny_mlm), "--task", "sst2", "--data-dir", str(sst_dir), "--out",
                 str(tmp_path / "run"), "--template", "{text_a} it was {mask} .", "--verbalizer", "bad", "good",
                 "--shots-per-class", "8", "--max-steps", "2", "--max-length", "32", "--precision", "fp32",
                 "--no-progress"])
    assert code == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train_examples"] == 16


def test_long_inputs_are_cut_inside_the_texts_longest_first(tiny_mlm):
    """prompt_examples cuts the longer of text_a/text_b a token at a time until the filled template fits max_length:
    the slot and the template's own words always survive, short examples pass through untouched."""
    from ptmkit.adapt.prompt_model import prompt_examples
    from ptmkit.adapt.prompts import Template
    from ptmkit.data.examples import Example, TaskData

    tok = Tokenizer.load(tiny_mlm)
    rng = random.Random(3)
    long_a, long_b = _sentence(rng, 0) * 6, _sentence(rng, 1) * 3
    short = Example(_sentence(rng, 1), "john", 1)
    data = TaskData([Example(long_a, long_b, 0), Example(long_b, long_a, 1), short, Example(long_a, "", 0)],
                    ["bad", "good"], False, ("a", "b"))
    template = Template("{text_a} ? {mask} , {text_b}")
    out = prompt_examples(data, template, tok, 40, causal=False)
    mask = tok.special_tokens["mask"]
    for e, cut in zip(data.examples, out.examples):
        ids = tok.encode(cut.text_a)
        assert len(ids) <= 40 and cut.text_a.count(mask) == 1 and cut.text_b is None and cut.label == e.label
    assert out.examples[2].text_a == template.fill(short.text_a, short.text_b, mask)  # fits: untouched
    # longest first: both sides of the first pair were cut to equal lengths (a tie keeps text_a one longer at most)
    a, b = out.examples[0].text_a.split(f" ? {mask} , ")
    na, nb = len(tok.encode(a, add_special_tokens=False)), len(tok.encode(b, add_special_tokens=False))
    assert abs(na - nb) <= 1 and na + nb == 40 - len(tok.encode(template.fill("", "", mask)))
    causal = prompt_examples(data, Template("{text_a} , {text_b} ? {mask}"), tok, 40, causal=True)
    assert all(mask not in e.text_a and len(tok.encode(e.text_a)) <= 40 for e in causal.examples)  # up to the slot
