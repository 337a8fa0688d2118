"""RAG: with one retrieved passage both marginalisations equal the generator's own log-likelihood of the answer
after [passage ; separator ; question]; the gradient reaches the query encoder; generation returns the planted
passage first and agrees across decodings when k = 1; a generator or k RAG cannot use is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.objectives.rag import RAG, RAGConfig
from ptmkit.retrieval.rag_generate import rag_generate

from .augmented_fixtures import index_dir, retriever, tiny, tokenizer  # noqa: F401  (fixtures)
from .conftest import PLANTED

QUESTIONS = [PLANTED, "river mountain castle garden"]
ANSWERS = [" seven purple", " winter"]


def _batch(tok, questions=QUESTIONS, answers=ANSWERS):
    q = tok.encode_batch(questions, add_special_tokens=False)
    a = tok.encode_batch(answers, add_special_tokens=False)
    T, A = max(map(len, q)), max(map(len, a))
    ids = torch.tensor([x + [tok.pad_id] * (T - len(x)) for x in q])
    labels = torch.tensor([x + [-100] * (A - len(x)) for x in a])
    return {"input_ids": ids, "attention_mask": (ids != tok.pad_id).long(), "labels": labels}


@pytest.mark.parametrize("marginalise", ["sequence", "token"])
def test_one_passage_equals_the_generator_conditioned_on_it(tokenizer, retriever, marginalise):
    rag = RAG(RAGConfig(k=1, marginalise=marginalise), tokenizer, retriever)
    model = tiny("llama", "causal-lm", tokenizer.vocab_size)
    batch = _batch(tokenizer)
    loss, _ = rag.loss(model, batch)
    top = retriever.index.search(retriever.query.encode(QUESTIONS), 1).ids[:, 0]
    total, count = 0.0, 0
    for q, a, z in zip(QUESTIONS, ANSWERS, top):  # the plain model on [z ; "\n" ; x ; y], one example at a time
        prompt = (tokenizer.encode(retriever.index.passage(int(z)).text, add_special_tokens=False)[:96]
                  + tokenizer.encode("\n", add_special_tokens=False) + tokenizer.encode(q, add_special_tokens=False))
        ans = tokenizer.encode(a, add_special_tokens=False)
        logits = model(torch.tensor([prompt + ans])).logits[0, len(prompt) - 1:-1]
        total = total + F.cross_entropy(logits.float(), torch.tensor(ans), reduction="sum")
        count += len(ans)
    torch.testing.assert_close(loss, total / count, rtol=1e-6, atol=1e-6)


def test_token_and_sequence_differ_with_several_passages_and_gradient_reaches_the_query(tokenizer, retriever):
    model = tiny("llama", "causal-lm", tokenizer.vocab_size)
    losses = {}
    for m in ("sequence", "token"):
        rag = RAG(RAGConfig(k=3, marginalise=m), tokenizer, retriever)
        module = rag.bind(model)
        module.zero_grad()
        losses[m], _ = rag.loss(model, _batch(tokenizer))
        losses[m].backward()
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module["query"].parameters())
    # several passages: a mixture per token is not a mixture per answer (they agree only when k = 1)
    assert losses["token"].item() != pytest.approx(losses["sequence"].item(), abs=1e-7)


@pytest.mark.parametrize("marginalise", ["sequence", "token"])
def test_generation_shows_the_planted_passage_first(tokenizer, retriever, marginalise):
    rag = RAG(RAGConfig(k=2, marginalise=marginalise), tokenizer, retriever)
    model = tiny("llama", "causal-lm", tokenizer.vocab_size)
    out = rag_generate(model, rag, [PLANTED, "winter summer music"], max_new_tokens=4)
    assert out[0].passages[0].text == PLANTED and len(out[0].passages) == 2
    assert out[0].probs[0] > out[0].probs[1] and sum(out[1].probs) == pytest.approx(1.0)
    assert all(isinstance(a.answer, str) for a in out)


def test_k1_decodings_agree_with_plain_greedy(tokenizer, retriever):
    model = tiny("llama", "causal-lm", tokenizer.vocab_size)
    answers = {m: rag_generate(model, RAG(RAGConfig(k=1, marginalise=m), tokenizer, retriever), [PLANTED],
                               max_new_tokens=5, stop_tokens=[])[0].answer for m in ("sequence", "token")}
    rag = RAG(RAGConfig(k=1), tokenizer, retriever)
    prompt = (tokenizer.encode(PLANTED, add_special_tokens=False) + tokenizer.encode("\n", add_special_tokens=False)
              + tokenizer.encode(PLANTED, add_special_tokens=False))
    plain = model.generate(torch.tensor([prompt]), max_new_tokens=5)[0, len(prompt):]
    assert answers["sequence"] == answers["token"] == tokenizer.decode(plain.tolist())
    assert len(rag.passages) == len(retriever)


def test_conditioned_prompts_are_what_the_generator_reads(tokenizer, retriever):
    """Each question's prompts are [passage ; separator ; question] as the loss builds them, best passage first, with
    log p(z|x) normalised over the k; scoring an answer after them equals the objective's own answer_log_probs."""
    rag = RAG(RAGConfig(k=2), tokenizer, retriever)
    model = tiny("llama", "causal-lm", tokenizer.vocab_size)
    prompts, log_prior, pid = rag.conditioned_prompts(QUESTIONS)
    assert len(prompts) == 2 and all(len(p) == 2 for p in prompts) and log_prior.shape == pid.shape == (2, 2)
    assert rag.retriever.index.passage(int(pid[0, 0])).text == PLANTED and log_prior[0, 0] > log_prior[0, 1]
    torch.testing.assert_close(log_prior.exp().sum(1), torch.ones(2))
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for b, q in enumerate(QUESTIONS):
        for k in range(2):
            z = rag.retriever.index.passage(int(pid[b, k])).text
            assert prompts[b][k] == enc(z)[:96] + enc("\n") + enc(q)
    q, n, pid2, _ = rag.retrieve(_batch(tokenizer), grad=False)
    rows, lengths = rag.prompts(q, n, pid2)
    ans = torch.tensor([enc(ANSWERS[0])] * 4)
    want = rag.answer_log_probs(model, rows, lengths, ans, torch.full((4,), ans.shape[1])).sum(-1)  # (B*K,)
    from ptmkit.analysis.knowledge import candidate_log_probs

    got = torch.stack([candidate_log_probs(model, p, [enc(ANSWERS[0])])[0] for ps in prompts for p in ps])
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_refusals_name_the_fix(tokenizer, retriever):
    with pytest.raises(ConfigError, match="k <= "):
        RAG(RAGConfig(k=len(retriever) + 1), tokenizer, retriever)
    with pytest.raises(ConfigError, match="causal LM"):
        RAG(RAGConfig(k=1), tokenizer, retriever).bind(tiny("bert", "masked-lm", tokenizer.vocab_size))
    with pytest.raises(ConfigError, match="tokenizer the generator was trained with"):
        RAG(RAGConfig(k=1), tokenizer, retriever).bind(tiny("llama", "causal-lm", 50))
    with pytest.raises(ConfigError, match="marginalise"):
        RAGConfig(marginalise="document")


def test_trains_through_the_engine_and_the_query_encoder_loads_back(tokenizer, index_dir, tmp_path):
    import json

    from ptmkit.models import save_model
    from ptmkit.recipes.rag import RagRunConfig, load_rag, train_rag
    from ptmkit.train.loop import TrainConfig

    gen = tmp_path / "gen"
    save_model(tiny("llama", "causal-lm", tokenizer.vocab_size), gen)
    tokenizer.save(gen)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, ANSWERS)))
    cfg = RagRunConfig(generator=str(gen), index=str(index_dir), train=str(data), batch_size=2,
                       objective={"k": 2, "marginalise": "token"}, out=str(tmp_path / "run"),
                       engine=TrainConfig(steps=3, precision="fp32", eval_every=0, checkpoint_every=3,
                                          progress_bar=False))
    s = train_rag(cfg)
    assert s["steps"] == 3 and (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") >= 2
    model, rag = load_rag(s["generator"], index_dir, s["query_encoder"], {"k": 2})
    assert rag.retriever.query.fingerprint() != rag.retriever.document.fingerprint()  # the trained one
    assert rag_generate(model, rag, [PLANTED], max_new_tokens=2)[0].passages[0].text == PLANTED
