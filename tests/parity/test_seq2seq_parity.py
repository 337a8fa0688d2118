"""Encoder-decoder parity with transformers: T5 (v1.0 ReLU / v1.1 gated-GELU, tied / untied), T5EncoderModel,
BART and mBART. Tiny random HF models are converted, compared layer by layer (fp32, padded and dense sources,
explicit decoder_input_ids), exported back, and decoded greedily against HF generate(do_sample=False).
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from safetensors.torch import load_file
from torch import nn
from torch.testing import assert_close

from ptmkit.models import Seq2SeqLM, load_model, save_model
from ptmkit.models.convert.base import CheckpointError
from tests.parity.hf_tiny import randomise_norms_and_biases

V = 97
TOL = dict(atol=1e-5, rtol=1e-4)


def hf_config(case: str):
    if case.startswith("t5"):
        gated, tied = "gated" in case, "untied" not in case
        # Few buckets and a short max_distance so 12-token inputs reach the logarithmic buckets; d_kv * heads
        # != d_model and an extra decoder layer in the gated cases exercise those shapes too.
        return T.T5Config(
            vocab_size=V, d_model=32, d_kv=12 if gated else 8, d_ff=48, num_layers=2,
            num_decoder_layers=3 if gated else 2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=10, dropout_rate=0.0, feed_forward_proj="gated-gelu" if gated else "relu",
            tie_word_embeddings=tied, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    kw = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=40,
              dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
              forced_eos_token_id=None)
    if case == "bart":
        return T.BartConfig(**kw)
    if case == "bart-scaled":
        return T.BartConfig(**kw, scale_embedding=True)
    if case == "bart-untied":
        return T.BartConfig(**kw, tie_word_embeddings=False)
    if case == "mbart":
        return T.MBartConfig(**kw, scale_embedding=True)
    if case == "mbart-untied":
        return T.MBartConfig(**kw, scale_embedding=True, tie_word_embeddings=False)
    raise KeyError(case)


T5_CASES = ["t5-relu-tied", "t5-relu-untied", "t5-gated-tied", "t5-gated-untied"]
CASES = T5_CASES + ["bart", "bart-scaled", "bart-untied", "mbart", "mbart-untied"]
HF = {  # (family prefix, task) -> transformers class
    ("t5", "seq2seq-lm"): T.T5ForConditionalGeneration, ("t5", "base"): T.T5Model,
    ("bart", "seq2seq-lm"): T.BartForConditionalGeneration, ("bart", "base"): T.BartModel,
    ("mbart", "seq2seq-lm"): T.MBartForConditionalGeneration, ("mbart", "base"): T.MBartModel,
}


def make_reference(case: str, task: str):
    cfg = hf_config(case)
    kind = case.split("-")[0]
    model = HF[(kind, task)](cfg).eval()
    # Random norms and biases, final_logits_bias included (HF initialises them to 1/0), so a swapped or dropped
    # tensor shows up.
    randomise_norms_and_biases(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and not case.startswith("t5") and "proj" in name:
                p.normal_(0.0, 0.2)  # BART's init (std 0.02) leaves the source nearly invisible to the decoder
        if case.startswith("t5-") and "untied" in case and task == "seq2seq-lm":
            # transformers 5 ties T5's lm_head at construction whatever the config says; untie it by hand.
            model.lm_head.weight = nn.Parameter(torch.randn(V, cfg.d_model) * 0.5)
        if case.startswith("mbart-") or case.startswith("bart-"):
            if "untied" in case:
                # transformers 5 unties BART's per-stack token tables too; the papers (and ptmkit) share one
                # table across encoder and decoder and untie only the output layer.
                base = model.model
                base.encoder.embed_tokens.weight = base.decoder.embed_tokens.weight = base.shared.weight
    return model


def _source(case: str, padded: bool):
    ids = torch.randint(3, V, (3, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 8:] = 0  # right padding
        mask[2, 5:] = 0
        ids = ids.masked_fill(mask == 0, 0 if case.startswith("t5") else 1)
    return ids, mask


def _hidden(out, name):
    return getattr(out, name)


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("task", ["seq2seq-lm", "base"])
@pytest.mark.parametrize("case", CASES)
def test_import_export_parity(tmp_path, case, task, padded):
    if task == "base" and "untied" in case:
        pytest.skip("the base model has no output layer to tie")
    ref = make_reference(case, task)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    assert isinstance(ours, Seq2SeqLM) == (task == "seq2seq-lm")
    if task == "seq2seq-lm":
        assert ours.tied == ("untied" not in case)
    ids, mask = _source(case, padded)
    dec = torch.randint(3, V, (3, 7))
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_hidden_states=True)
        got = ours(ids, mask, dec, output_hidden_states=True)
    keep = mask.bool()
    assert_close(got.encoder_last_hidden_state[keep], want.encoder_last_hidden_state[keep], **TOL)
    for name, sel in (("encoder_hidden_states", keep), ("decoder_hidden_states", slice(None))):
        g, w = _hidden(got, name), _hidden(want, name)
        assert len(g) == len(w)
        for a, b in zip(g, w):
            assert_close(a[sel], b[sel], **TOL)  # source padding positions are don't-care
    main = "logits" if task == "seq2seq-lm" else "last_hidden_state"
    assert_close(getattr(got, main), getattr(want, main), **TOL)

    # export: transformers loads our directory unchanged and reproduces its own outputs
    save_model(ours, tmp_path / "ours")
    back = type(ref).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    assert_close(getattr(again, main), getattr(want, main), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_t5_encoder_model_parity(tmp_path, padded):
    cfg = hf_config("t5-gated-untied")
    ref = randomise_norms_and_biases(T.T5EncoderModel(cfg).eval())
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    assert ours.family == "t5-encoder"
    ids, mask = _source("t5", padded)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, mask, output_hidden_states=True)
    keep = mask.bool()
    for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
        assert_close(a[keep], b[keep], **TOL)
    save_model(ours, tmp_path / "ours")
    back = T.T5EncoderModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert_close(back(input_ids=ids, attention_mask=mask).last_hidden_state, want.last_hidden_state)


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_transformers(tmp_path, case):
    # (Random tied models tend to repeat their input token; the untied cases give varied continuations.)
    ref = make_reference(case, "seq2seq-lm")
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _source(case, padded=True)
    cfg = ref.config
    # transformers 5 sizes T5's decoder cache by num_layers, so it cannot cache a deeper decoder: run it uncached.
    hf_cache = getattr(cfg, "num_decoder_layers", None) in (None, getattr(cfg, "num_layers", None))
    want = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False,
                        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                        decoder_start_token_id=cfg.decoder_start_token_id, use_cache=hf_cache)
    stop = dict(stop_tokens=[cfg.eos_token_id], pad_token_id=cfg.pad_token_id)
    cached = ours.generate(ids, attention_mask=mask, max_new_tokens=14, **stop)
    uncached = ours.generate(ids, attention_mask=mask, max_new_tokens=14, use_cache=False, **stop)
    assert cached.tolist() == uncached.tolist()
    assert cached.tolist() == want.tolist()


@pytest.mark.parametrize("case", ["t5-gated-untied", "bart-untied", "mbart-untied"])
def test_generation_without_stop_runs_to_length_and_matches(tmp_path, case):
    ref = make_reference(case, "seq2seq-lm")
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids = torch.randint(3, V, (2, 9))
    hf_cache = not case.startswith("t5")  # see above: transformers cannot cache T5's deeper decoder
    want = ref.generate(input_ids=ids, max_new_tokens=20, do_sample=False, eos_token_id=None, use_cache=hf_cache)
    got = ours.generate(ids, max_new_tokens=20)
    assert got.shape == (2, 21)
    assert got.tolist() == want.tolist()


def test_tied_config_with_different_lm_head_is_refused(tmp_path):
    ref = make_reference("t5-relu-untied", "seq2seq-lm")
    ref.config.scale_decoder_outputs = True  # claims a tied, rescaled head while the tensors differ
    ref.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_model(tmp_path / "hf")


def test_bart_checkpoint_without_final_logits_bias_loads_zeros(tmp_path):
    ref = make_reference("bart", "seq2seq-lm")
    ref.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    assert "final_logits_bias" in state
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if k != "final_logits_bias"}, tmp_path / "hf" / "model.safetensors")
    ours = load_model(tmp_path / "hf")
    assert torch.count_nonzero(ours.final_logits_bias) == 0


def test_mbart_layout_mismatch_is_refused(tmp_path):
    ref = make_reference("bart", "seq2seq-lm")
    ref.save_pretrained(tmp_path / "hf")
    import json

    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["normalize_before"] = True  # a fairseq-era mBART config mislabelled as bart
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="normalize_before"):
        load_model(tmp_path / "hf")


@pytest.mark.parametrize("case", ["t5-gated-untied", "bart", "mbart"])
def test_padded_decoder_inputs_match(tmp_path, case):
    ref = make_reference(case, "seq2seq-lm")
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _source(case, padded=True)
    dec = torch.randint(3, V, (3, 7))
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 4:] = 0  # right-padded targets, as in a training batch
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
        got = ours(ids, mask, dec, dec_mask).logits
    keep = dec_mask.bool()
    assert_close(got[keep], want[keep], **TOL)
