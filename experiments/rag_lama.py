"""Issue 17 (survey §4.2, external memory): does retrieval put facts into a frozen generator? LAMA T-REx P@1 of
SmolLM2-135M answering alone, and with RAG-sequence retrieval (Lewis et al. 2020) over an index that holds the
evidence sentences of the facts asked and over the same index with those sentences taken out. Writes the "rag-lama"
block of docs/knowledge.md.

    facts       a seeded sample of --facts-per-relation T-REx facts (with evidence) of each relation; the question is
                the relation's LAMA template up to the blank with the subject in ("Allan Peiper was born in").
    scoring     ptmkit.analysis.knowledge.probe_causal_lm, the same scorer as `ptm analyze lama`: the relation's
                objects (all of them in T-REx) ranked by log p(object | prompt); with retrieval the prompt is
                [passage ; newline ; question] for each of k passages (objectives.rag.RAG.conditioned_prompts) and
                the objects are ranked by log Σ_z p(z|x) p(object | z, x), p(z|x) = softmax(q·d / τ) over the k.
    corpora     with evidence: every T-REx evidence sentence (object filled in), one passage each, in a MiniLM FAISS
                index (exact inner product). without: the same sentences minus every evidence sentence of the facts
                asked (other facts' sentences stay, so the domain and the distractors are the same).
    retrieval   gold recall@k: a question's own evidence among its k passages; "object in passages": the object's
                name appears in one of them (it can, from another fact's sentence, even without the evidence).
    not done    RAG fine-tuning (`ptm rag train`) of SmolLM2: ~1 CPU-minute a step at k = 5 here, out of reach.

    python experiments/rag_lama.py              # the study (the estimate is printed by --smoke)
    python experiments/rag_lama.py --smoke      # every stage on a few facts and a small corpus; writes no docs

Finished stages (indexes, each row's relations) are kept in --out and skipped when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit import atomic  # noqa: E402
from ptmkit.analysis.knowledge import Fact, cloze_prefix, probe_causal_lm, templates  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.data.kg import read_lama  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.objectives.rag import RAG, RAGConfig  # noqa: E402
from ptmkit.recipes.evaluate import load_adapted  # noqa: E402
from ptmkit.recipes.index import load_encoder  # noqa: E402
from ptmkit.retrieval import ChunkConfig, EncoderConfig, IndexConfig, PassageIndex  # noqa: E402
from ptmkit.retrieval.retriever import Retriever  # noqa: E402

CORPORA = {"with": "the asked facts' evidence in the index", "without": "the asked facts' evidence taken out"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="smollm2", help="causal LM (a name of experiments/_models.py or a directory)")
    p.add_argument("--encoder", default="minilm", help="retriever's encoder (a name or a directory)")
    p.add_argument("--relations", default="", help="comma list of T-REx relations (default: all 28)")
    p.add_argument("--facts-per-relation", type=int, default=10, help="seeded sample of facts asked per relation")
    p.add_argument("--max-corpus", type=int, default=None,
                   help="cap on the corpus's sentences (the asked facts' evidence always kept); default all")
    p.add_argument("--ks", default="1,5", help="passages per question, comma list (a row per k and corpus)")
    p.add_argument("--temperature", type=float, default=0.1, help="τ of p(z|x) (RAG's default here)")
    p.add_argument("--passage-tokens", type=int, default=96, help="generator tokens of a passage (cut after that)")
    p.add_argument("--batch-size", type=int, default=64, help="candidates scored per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/rag_lama", help="study folder (corpora, indexes, rows, result.json)")
    p.add_argument("--docs", default=str(ROOT / "docs" / "knowledge.md"), help="page whose 'rag-lama' block is written")
    p.add_argument("--smoke", action="store_true",
                   help="3 relations x 2 facts, a 300-sentence corpus, k = 1,2; --out runs/rag_lama-smoke; no docs")
    args = p.parse_args(argv)
    args.given = sys.argv[1:] if argv is None else list(argv)
    if args.smoke:
        args.out = args.out if args.out != "runs/rag_lama" else "runs/rag_lama-smoke"
        args.docs = ""
        args.relations = args.relations or "P19,P103,P138"  # many, few and many multi-token objects
        args.facts_per_relation = min(args.facts_per_relation, 2)
        args.max_corpus = min(args.max_corpus or 300, 300)
        args.ks = "1,2"
    args.ks = sorted({int(k) for k in args.ks.split(",") if k})
    if not args.ks or args.ks[0] < 1:
        p.error("--ks: give passages per question >= 1, e.g. 1,5")
    return args


def log(msg: str) -> None:
    print(f"[rag-lama] {msg}", flush=True)


# ---- facts and corpora ------------------------------------------------------------------------------------------


def build_facts(args) -> dict:
    """facts.json: the asked facts ({relation, subject, object, gold sentences}), every relation's objects (the
    candidates) and the two corpora as text files, one sentence a line."""
    out = Path(args.out)
    path = out / "facts.json"
    if path.exists():
        return json.loads(path.read_text())
    kg, evidence = read_lama(data_root() / "lama", held_out=0.0)
    sentences: dict[int, list[str]] = {}
    for e in evidence:
        sentences.setdefault(e.triple, []).append(" ".join(e.text.split()))  # one line each
    wanted = set(args.relations.split(",")) if args.relations else set(kg.relations)
    missing = wanted - set(kg.relations)
    if missing:
        raise SystemExit(f"--relations: {sorted(missing)} not in the shared T-REx; there: {','.join(kg.relations)}")
    by_rel: dict[str, list[int]] = {}
    candidates: dict[str, set[str]] = {}
    for i, (h, r, t) in enumerate(kg.triples.tolist()):
        rel = kg.relations[r]
        if rel in wanted:
            candidates.setdefault(rel, set()).add(kg.labels[t])
            if i in sentences:
                by_rel.setdefault(rel, []).append(i)
    rng = random.Random(args.seed)
    asked = []
    for rel in sorted(by_rel):
        for i in sorted(rng.sample(by_rel[rel], min(args.facts_per_relation, len(by_rel[rel])))):
            h, _, t = kg.triples[i].tolist()
            asked.append({"relation": rel, "subject": kg.labels[h], "object": kg.labels[t],
                          "gold": sorted(set(sentences[i]))})
    gold = {s for f in asked for s in f["gold"]}
    distinct = {s for ss in sentences.values() for s in ss}
    others = sorted(distinct - gold)
    if args.max_corpus is not None:
        others = sorted(rng.sample(others, max(0, min(len(others), args.max_corpus - len(gold)))))
    corpora = {"with": sorted(gold) + others, "without": others}
    for name, lines in corpora.items():
        atomic.write_text(out / f"corpus-{name}.txt", "\n".join(lines) + "\n")
    facts = {"asked": asked, "candidates": {r: sorted(c) for r, c in candidates.items()},
             "sentences": {n: len(c) for n, c in corpora.items()}, "all_sentences": len(distinct)}
    atomic.write_text(path, json.dumps(facts, ensure_ascii=False) + "\n")
    return facts


def build_index(args, name: str, times: dict) -> Path:
    """A flat MiniLM index of corpus-NAME.txt, one passage per sentence (128 tokens, longer ones cut in windows)."""
    d = Path(args.out) / f"index-{name}"
    if not (d / "manifest.json").exists():
        log(f"indexing corpus '{name}' ({CORPORA[name]})")
        encoder = load_encoder(model_dir(args.encoder), EncoderConfig(precision="auto", batch_size=128))
        idx = PassageIndex.build(Path(args.out) / f"corpus-{name}.txt", encoder, IndexConfig(kind="flat"),
                                 ChunkConfig(max_tokens=128, overlap=32), show_progress=False)
        idx.save(d)
    times[f"index_{name}_s"] = json.loads((d / "manifest.json").read_text())["build_seconds"]
    return d


# ---- scoring ----------------------------------------------------------------------------------------------------


def merge(parts: list[dict]) -> dict:
    """Metrics of disjoint groups of one relation's facts (same candidates) as one: means weighted by 'asked'."""
    asked = sum(p["asked"] for p in parts)
    out = {"asked": asked, "candidates": parts[0]["candidates"]}
    for m in ("p@1", "p@10", "mrr"):
        out[m] = sum(p[m] * p["asked"] for p in parts if p["asked"]) / asked if asked else None
    return out


def score_relation(model, tok, rag: RAG | None, facts: list[dict], template: str, candidates: list[str],
                   batch_size: int) -> dict:
    """One relation's metrics, alone (rag None) or with retrieval, then also the gold recall, the object-in-passages
    rate and the metrics of the facts whose evidence was / was not retrieved."""
    items = [Fact(f["subject"], f["object"]) for f in facts]
    if rag is None:
        return probe_causal_lm(model, tok, items, template, candidates, batch_size)
    prompts, log_prior, pid = [], [], []
    for s in range(0, len(items), 32):
        p, lp, ids = rag.conditioned_prompts([cloze_prefix(f, template) for f in items[s:s + 32]])
        prompts += p
        log_prior.append(lp)
        pid.append(ids)
    log_prior, pid = torch.cat(log_prior), torch.cat(pid)
    index = rag.retriever.index
    hit, named = [], []
    for f, row in zip(facts, pid.tolist()):
        texts = [index.passage(i).text for i in row]
        hit.append(any(t in g or g in t for t in texts for g in f["gold"]))  # a passage is a sentence or a window
        named.append(any(f["object"].lower() in t.lower() for t in texts))
    groups = []
    for want in (True, False):
        sel = [i for i, h in enumerate(hit) if h == want]
        groups.append(probe_causal_lm(model, tok, [items[i] for i in sel], template, candidates, batch_size,
                                      contexts=[(prompts[i], log_prior[i]) for i in sel]) if sel else
                      {"asked": 0, "candidates": len(candidates), "p@1": None, "p@10": None, "mrr": None})
    return {**merge(groups), "gold_recall": sum(hit) / len(hit), "object_in_passages": sum(named) / len(named),
            "evidence_retrieved": groups[0], "evidence_missed": groups[1]}


def run_rows(args, facts: dict, indexes: dict[str, Path], times: dict) -> dict[str, dict]:
    """rows/NAME/RELATION.json for NAME in none, with-kK, without-kK; a finished relation is not scored again."""
    path = model_dir(args.generator)
    model, tok = load_adapted(path).eval(), Tokenizer.load(path)
    cloze = templates(data_root() / "lama" / "relations.jsonl")
    by_rel: dict[str, list[dict]] = {}
    for f in facts["asked"]:
        by_rel.setdefault(f["relation"], []).append(f)
    plan = [("none", None, 0)] + [(f"{c}-k{k}", c, k) for c in CORPORA for k in args.ks]
    retrievers: dict[str, Retriever] = {}
    rows = {}
    for name, corpus, k in plan:
        d = Path(args.out) / "rows" / name
        t0, scored = time.perf_counter(), 0
        rag = None
        for rel, fs in sorted(by_rel.items()):
            f = d / f"{rel}.json"
            if f.exists():
                continue
            if corpus is not None and rag is None:
                if corpus not in retrievers:
                    retrievers[corpus] = Retriever.load(indexes[corpus], temperature=args.temperature)
                rag = RAG(RAGConfig(k=k, marginalise="sequence", temperature=args.temperature,
                                    passage_tokens=args.passage_tokens), tok, retrievers[corpus])
            with torch.no_grad():
                r = score_relation(model, tok, rag, fs, cloze[rel], facts["candidates"][rel], args.batch_size)
            atomic.write_text(f, json.dumps(r) + "\n")
            scored += len(fs)
        if scored:  # seconds per fact of this row, for the estimate (prompts scored: 1 alone, k with retrieval)
            times[f"row_{name}_s_per_fact"] = (time.perf_counter() - t0) / scored
            log(f"{name}: {scored} facts in {time.perf_counter() - t0:.0f} s")
        rows[name] = {rel: json.loads((d / f"{rel}.json").read_text()) for rel in sorted(by_rel)}
    return rows


# ---- report -----------------------------------------------------------------------------------------------------


def summary(rel_rows: dict[str, dict]) -> dict:
    """Macro means over relations (a relation with no fact asked is left out) and the facts asked."""
    scored = [r for r in rel_rows.values() if r["asked"]]
    out = {"facts": sum(r["asked"] for r in scored), "relations": len(scored)}
    for m in ("p@1", "p@10", "mrr", "gold_recall", "object_in_passages"):
        vals = [r[m] for r in scored if r.get(m) is not None]
        out[m] = statistics.fmean(vals) if vals else None
    for part in ("evidence_retrieved", "evidence_missed"):
        if scored and part in scored[0]:
            n = sum(r[part]["asked"] for r in scored)
            out[part] = {"facts": n, "p@1": sum((r[part]["p@1"] or 0) * r[part]["asked"] for r in scored) / n
                         if n else None}
    return out


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(args, facts: dict, rows: dict, sums: dict, indexes: dict, times: dict) -> str:
    passages = {c: json.loads((indexes[c] / "manifest.json").read_text())["passages"] for c in CORPORA}
    lines = ["| retrieval | k | P@1 | P@10 | MRR | gold evidence retrieved | object in passages | P@1, evidence "
             "retrieved | P@1, evidence missed |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in sums.items():
        corpus, k = (name.rsplit("-k", 1) + ["0"])[:2] if name != "none" else ("none", "0")
        what = "none (the generator alone)" if name == "none" else f"{corpus} evidence ({passages[corpus]:,} passages)"
        ret, miss = s.get("evidence_retrieved"), s.get("evidence_missed")
        lines.append(f"| {what} | {k if name != 'none' else '–'} | **{pct(s['p@1'])}** | {pct(s['p@10'])} | "
                     f"{pct(s['mrr'])} | {pct(s['gold_recall'])} | {pct(s['object_in_passages'])} | "
                     + (f"{pct(ret['p@1'])} (of {ret['facts']})" if ret else "–") + " | "
                     + (f"{pct(miss['p@1'])} (of {miss['facts']})" if miss else "–") + " |")
    rels = sorted(next(iter(rows.values())))
    lines += ["", "Per relation, P@1 (%) (the relation's objects are the candidates; their number in brackets):", "",
              "| relation | " + " | ".join(sums) + " |", "|---|" + "---|" * len(sums)]
    for rel in rels:
        first = next(iter(rows.values()))[rel]
        lines.append(f"| {rel} ({first['candidates']}) | " + " | ".join(pct(rows[n][rel]['p@1']) for n in sums) + " |")
    n = sums["none"]["facts"]
    gen = "SmolLM2-135M" if args.generator == "smollm2" else Path(model_dir(args.generator)).name
    enc = "all-MiniLM-L6-v2" if args.encoder == "minilm" else Path(model_dir(args.encoder)).name
    lines += ["", f"{gen} (frozen, fp32) on {n:,} LAMA T-REx facts "
              f"({args.facts_per_relation} a relation, seeded; {len(rels)} relations, macro means over relations), "
              "ranking each relation's T-REx objects by log-likelihood after the template's beginning "
              f"(`probe_causal_lm`, as `ptm analyze lama`). Retrieval: {enc} (mean pooling) over a flat "
              f"FAISS index; RAG-sequence over the k passages with p(z|x) = softmax(q·d / {args.temperature:g}), each "
              f"passage cut to {args.passage_tokens} generator tokens before the question. Corpus 'with': "
              f"{facts['sentences']['with']:,} T-REx evidence sentences (object filled in) of "
              f"{facts['all_sentences']:,}, the asked facts' included; 'without': the same minus those "
              f"{facts['sentences']['with'] - facts['sentences']['without']:,} sentences. Gold recall: a fact's own "
              "evidence sentence among its k passages. Not trained for retrieval: the generator reads the passages "
              f"zero-shot. Total {times['total_s'] / 60:.0f} min; measured {date.today().isoformat()} with "
              f"`python experiments/rag_lama.py{' ' + shlex.join(args.given) if args.given else ''}`."]
    return "\n".join(lines)


def estimate(args, facts: dict, times: dict) -> dict:
    """Minutes of the default study on this machine as loaded now, from this run's parts: indexing by sentences,
    each row by facts (a retrieval row's cost grows with k: k prompts a fact)."""
    timed = [times[f"row_{c}-k{k}_s_per_fact"] / k for c in CORPORA for k in args.ks if f"row_{c}-k{k}_s_per_fact" in times]
    if not timed:
        return None  # every row was reused from --out: nothing was timed in this run
    full = parse_args([])
    n_full = 28 * full.facts_per_relation
    n_sent = facts["all_sentences"]
    sent_rate = sum(times[f"index_{c}_s"] for c in CORPORA) / sum(facts["sentences"].values())
    per_prompt = statistics.fmean(timed)
    parts = {"index": sent_rate * 2 * n_sent,
             "none": times.get("row_none_s_per_fact", per_prompt) * n_full,
             "retrieval": per_prompt * n_full * len(CORPORA) * sum(full.ks)}
    return {k: round(v / 60, 1) for k, v in parts.items()} | {"total": round(sum(parts.values()) / 60, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    facts = build_facts(args)
    log(f"{len(facts['asked'])} facts asked; corpora {facts['sentences']}")
    indexes = {c: build_index(args, c, times) for c in CORPORA}
    rows = run_rows(args, facts, indexes, times)
    times["total_s"] = time.perf_counter() - t0
    sums = {name: summary(r) for name, r in rows.items()}
    block = markdown(args, facts, rows, sums, indexes, times)
    print(block)
    result = {"experiment": "rag_lama", "facts": len(facts["asked"]), "ks": args.ks,
              "macro": {n: {m: s[m] for m in ("facts", "p@1", "p@10", "mrr", "gold_recall", "object_in_passages")}
                        for n, s in sums.items()}, "times": {k: round(v, 2) for k, v in times.items()}}
    if args.smoke:
        result["estimated_full_min"] = estimate(args, facts, times)
        log("estimated default study on this machine as loaded now: " + (
            f"{result['estimated_full_min']} min" if result["estimated_full_min"] else
            f"not estimated (every row was reused from {args.out}; delete it to time the stages)"))
    atomic.write_text(Path(args.out) / "result.json", json.dumps({**result, "rows": rows}, indent=2) + "\n")
    if args.docs:
        write_results_block(args.docs, block, "Knowledge and memory", name="rag-lama")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
