"""Issue 17 (survey §4.2, REALM: Guu et al. 2020): does retrieval-augmented masked-LM pre-training help a small
encoder, against the same encoder pre-trained on the same text with the same training FLOPs and no retrieval? At
BERT-mini scale (4 x 256) on this machine's CPU, so an answer about this scale only. Writes the "realm" block of
docs/knowledge.md.

    text        the evidence sentences of the LAMA T-REx training facts (ptmkit.data.kg: 20% of the facts held out,
                a sentence that is also evidence of a held-out fact left out), tokenised with all-MiniLM-L6-v2's
                WordPiece vocabulary, which the reader shares with the retriever (configs/realm-mini.yaml).
    rows        realm: configs/realm-mini.yaml (k = 4 passages + the null passage from a MiniLM FAISS index of the same
                sentences, salient-span masking, trivial retrievals excluded, trainable query encoder, index refresh
                every --refresh-every steps). mlm: the same model, data and optimiser with objective mlm (BERT's
                token masking), no retrieval. salient: objective entity (the same salient-span masking as realm, no
                retrieval), which separates the masking from the retrieval.
    compute     --budget steps of realm; every other row trains for the same FLOPs: training FLOPs per step measured
                by torch's FlopCounterMode on real steps (realm: the reader over k + 1 rows and the query encoder's
                forward and backward), plus realm's index refreshes (every passage re-embedded, counted the same way
                on a sample and scaled) spread over the steps between them. The initial index (MiniLM's own vectors)
                is not counted, as ERNIE's TransE is not in experiments/knowledge_pretraining.py.
    LAMA        P@1 at the template's blank (analysis.knowledge.probe_masked_lm) on training facts (their
                sentences were read in pre-training and are in realm's index) and held-out facts (their sentences are
                in neither), for every row's reader alone, and for realm also with retrieval: the reader marginalised
                over the k passages + null its trained query encoder retrieves from the index as last refreshed
                (recipes.realm.load_realm -> REALM.mask_log_probs: the pre-training marginal log Σ_z p(z|x) p(y|x,z),
                now at the cloze's mask over the whole vocabulary; trivial retrievals are not excluded at test time).
    held-out    masked-LM loss on the held-out facts' sentences (the reader alone, the same masks for every row).
    downstream  relation classification of held-out facts' sentences (experiments/knowledge_pretraining.py's task
                and fine-tuning, ptm finetune), plus a randomly initialised BERT-mini.

    python experiments/realm.py            # the study (its time is estimated by --smoke)
    python experiments/realm.py --smoke    # every stage at a few steps / examples; writes no docs

Finished stages are kept in --out and skipped when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402
import knowledge_pretraining as kp  # noqa: E402  (the knowledge study's evaluation and fine-tuning, reused)

from ptmkit import atomic  # noqa: E402
from ptmkit.analysis.knowledge import templates  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.cli.overrides import apply_overrides, load_yaml  # noqa: E402
from ptmkit.config import from_dict  # noqa: E402
from ptmkit.data.kg import HELD_OUT, TRAIN, KnowledgeGraph  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.data.shards import prepare_shards  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.models import load_model  # noqa: E402
from ptmkit.recipes.index import load_encoder  # noqa: E402
from ptmkit.recipes.knowledge import build_lama_kg  # noqa: E402
from ptmkit.recipes.pretrain import PretrainConfig, pretrain  # noqa: E402
from ptmkit.recipes.realm import load_realm  # noqa: E402
from ptmkit.retrieval import ChunkConfig, EncoderConfig, IndexConfig, PassageIndex  # noqa: E402
from ptmkit.train.flops import measured_step_flops  # noqa: E402

CONFIG = ROOT / "configs" / "realm-mini.yaml"
ROWS = ("realm", "mlm", "salient")
LABELS = {"realm": "REALM: salient-span MLM over k = 4 retrieved passages + null", "mlm": "MLM, no retrieval",
          "salient": "salient-span MLM (entity), no retrieval", "random": "no pre-training (random init)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/realm", help="study folder (graph, shards, index, runs, results.json)")
    p.add_argument("--docs", default="docs/knowledge.md", help="page whose 'realm' results block is written")
    p.add_argument("--encoder", default="minilm", help="retriever encoder and the reader's tokenizer (name or dir)")
    p.add_argument("--preset", default="bert-mini", help="the reader's (and the twins') model preset")
    p.add_argument("--budget", type=int, default=1000, help="compute budget in training steps of the realm row")
    p.add_argument("--refresh-every", type=int, default=500,
                   help="realm's index refresh (steps); each re-embeds every passage, counted in its compute")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per step, every row (default: configs/realm-mini.yaml's)")
    p.add_argument("--rows", default=",".join(ROWS), help="pre-trained rows (realm included: the budget's unit)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="cap on the training sentences (and the index) and on the held-out ones")
    kp.add_evaluation_options(p)
    p.add_argument("--smoke", action="store_true",
                   help="every stage at a few steps / examples, in --out runs/realm-smoke; no docs written")
    args = p.parse_args(argv)
    args.given = sys.argv[1:] if argv is None else list(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if any(r not in ROWS for r in args.rows) or "realm" not in args.rows:
        p.error(f"--rows: choose from {list(ROWS)}, realm included (the budget is counted in its steps)")
    if args.smoke:
        args.out = args.out if args.out != "runs/realm" else "runs/realm-smoke"
        args.docs = ""
        args.budget, args.refresh_every, args.ft_seeds = 4, 2, [0]
        # caps: a smaller value given on the command line is kept (the test suite's smoke run asks fewer)
        args.ft_train, args.ft_dev = min(args.ft_train, 200), min(args.ft_dev, 100)
        args.ft_epochs, args.eval_batches = min(args.ft_epochs, 1.0), min(args.eval_batches, 2)
        args.lama_max = min(args.lama_max or 200, 200)
        args.max_sentences = min(args.max_sentences or 1500, 1500)
    # a smoke run checks that every stage works, not the comparison: the twins stop after a few steps (their
    # equal-compute step counts are still computed, printed and used by the estimate)
    args.step_cap = 8 if args.smoke else None
    return args


def log(msg: str) -> None:
    print(f"[realm] {msg}", flush=True)


# ---- data: graph, text, shards, index ---------------------------------------------------------------------------


def prepare(args, times: dict) -> dict[str, str]:
    out = Path(args.out)
    tok_dir = str(model_dir(args.encoder))
    p = {"kg": str(out / "kg" / "kg"), "tokenizer": tok_dir, "train": str(out / "data" / "train"),
         "held": str(out / "data" / "held-out"), "index": str(out / "index"), "text": str(out / "text-train.jsonl")}
    t0 = time.perf_counter()
    if not (out / "kg" / "build.json").exists():
        log("building the LAMA T-REx graph and its evidence text")
        build_lama_kg(out / "kg", data_root() / "lama")
    held = out / "text-held-out.jsonl"
    for name, path in (("text-train.jsonl", Path(p["text"])), ("text-held-out.jsonl", held)):
        if not path.exists():  # capped in smoke runs; the training shards and the index read the same text
            lines = (out / "kg" / name).read_text().splitlines()
            atomic.write_text(path, "\n".join(lines[:args.max_sentences]) + "\n")
    for shards, text in (("train", p["text"]), ("held", str(held))):
        if not (Path(p[shards]) / "meta.json").exists():
            prepare_shards(text, tok_dir, p[shards], progress=False, overwrite=True)
    if not (Path(p["index"]) / "manifest.json").exists():
        log("indexing the training sentences (the retriever's starting vectors)")
        encoder = load_encoder(model_dir(args.encoder), EncoderConfig(precision="auto", batch_size=128))
        PassageIndex.build(p["text"], encoder, IndexConfig(kind="flat"), ChunkConfig(max_tokens=128, overlap=32),
                           show_progress=False).save(p["index"])
    times["prepare_s"] = time.perf_counter() - t0
    return p


# ---- pre-training at equal compute ------------------------------------------------------------------------------


def pretrain_config(args, row: str, paths: dict, steps: int) -> PretrainConfig:
    """configs/realm-mini.yaml with this study's data; the twins swap only the objective."""
    data = apply_overrides(load_yaml(str(CONFIG)), {
        "model.preset": args.preset, "data.train": paths["train"], "data.eval": paths["held"],
        "data.tokenizer": paths["tokenizer"], "data.eval_batches": 4, "objective.params.index": paths["index"],
        "objective.params.refresh_every": args.refresh_every, "train.steps": steps, "train.eval_every": 0,
        "train.checkpoint_every": max(50, steps // 4), "train.progress_bar": False, "train.seed": 0,
        "schedule.warmup_steps": max(1, steps // 10), "out": str(Path(args.out) / "pretrain" / row),
        **({"data.batch_size": args.batch_size} if args.batch_size else {})})
    realm = data["objective"]["params"]
    if row == "mlm":
        data["objective"] = {"name": "mlm", "params": {"mask_prob": realm.get("mask_prob", 0.15)}}
    elif row == "salient":  # REALM's masking without its retrieval: the entity objective, same finder and rates
        data["objective"] = {"name": "entity", "params": {k: realm[k] for k in ("entity_prob", "sources")
                                                          if k in realm}}
    return from_dict(PretrainConfig, data, where=f"realm study row {row}")


def refresh_flops(args, paths: dict) -> dict:
    """FLOPs of one index refresh (every passage through the document encoder), from 64 passages counted by
    FlopCounterMode and scaled by passage count; per realm step it is spread over --refresh-every steps."""
    index = PassageIndex.load(paths["index"])
    texts = [p.text for p in index.passages(range(min(64, len(index))))]
    per = measured_step_flops(lambda: index.encoder.encode(texts)) / len(texts)
    return {"passages": len(index), "refresh_flops": per * len(index),
            "per_step": per * len(index) / args.refresh_every if args.refresh_every else 0.0}


def run_pretraining(args, paths: dict, times: dict) -> dict[str, dict]:
    out = Path(args.out)
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    key = {"budget": args.budget, "refresh_every": args.refresh_every, "preset": args.preset,
           "batch_size": args.batch_size}
    if plan.get("key") != key:
        plan = {"key": key, "rows": {}}
    for row in args.rows:
        if row not in plan["rows"]:
            log(f"counting the training FLOPs of a {row} step")
            plan["rows"][row] = {"step_flops": kp.step_flops(pretrain_config(args, row, paths, 1))}
    if "refresh" not in plan:
        plan["refresh"] = refresh_flops(args, paths)
    plan["rows"]["realm"]["total_step_flops"] = plan["rows"]["realm"]["step_flops"] + plan["refresh"]["per_step"]
    budget = args.budget * plan["rows"]["realm"]["total_step_flops"]
    for row in args.rows:
        plan["rows"][row].setdefault("total_step_flops", plan["rows"][row]["step_flops"])
        plan["rows"][row]["steps"] = max(1, round(budget / plan["rows"][row]["total_step_flops"]))
    plan["budget_flops"] = budget
    atomic.write_text(plan_path, json.dumps(plan, indent=2) + "\n")
    log("equal compute: %.3g training FLOPs per row; steps %s" % (budget, {r: plan["rows"][r]["steps"]
                                                                          for r in args.rows}))
    runs = {}
    for row in args.rows:
        cfg = pretrain_config(args, row, paths, min(plan["rows"][row]["steps"], args.step_cap or 1 << 62))
        run = Path(cfg.out)
        if not (run / "summary.json").exists() or not (run / "model").exists():
            log(f"pre-training {row}: {cfg.train.steps} steps")
            pretrain(cfg, overwrite=True)  # an unfinished run restarts
        s = json.loads((run / "summary.json").read_text())
        runs[row] = {"dir": str(run / "model"), "steps": s["steps"], "equal_compute_steps": plan["rows"][row]["steps"],
                     "wall_s": s["wall_s"],
                     **{k: plan["rows"][row][k] for k in ("step_flops", "total_step_flops")}}
        times[f"pretrain_{row}_s"] = s["wall_s"]
    return runs, plan


# ---- evaluation: held-out MLM, LAMA (reader alone; realm also with its retrieval) ---------------------------------


def run_evaluation(args, paths: dict, runs: dict, times: dict) -> dict:
    t0 = time.perf_counter()
    tok = Tokenizer.load(paths["tokenizer"])
    kg = KnowledgeGraph.load(paths["kg"])
    cloze = templates(data_root() / "lama" / "relations.jsonl")
    facts = {s: kp.lama_facts(kg, split, args.lama_max) for s, split in (("seen", TRAIN), ("unseen", HELD_OUT))}
    res = {}
    for row, run in runs.items():
        realm = None
        if row == "realm":  # the reader with the retriever it trained (RUN/retriever, written when the run finished)
            model, _, realm = load_realm(Path(run["dir"]).parent)
        else:
            model = load_model(run["dir"])
        r = {"mlm_heldout": kp.heldout_mlm(model, tok, paths, False, args.eval_batches)}
        for split, fs in facts.items():
            r[f"lama_{split}"] = kp.lama(model, tok, fs, cloze)
        if realm is not None:
            t1 = time.perf_counter()
            for split, fs in facts.items():
                r[f"lama_{split}_retrieval"] = kp.lama(model, tok, fs, cloze, retrieval=realm)
            r["retrieval"] = {"k": realm.cfg.k, "null_passage": realm.cfg.null_passage,
                              "temperature": realm.cfg.temperature, "passages": len(realm.retriever)}
            times["lama_retrieval_s"] = time.perf_counter() - t1
        res[row] = r
        log(f"{row}: held-out MLM {r['mlm_heldout']:.3f}, LAMA P@1 seen {100 * r['lama_seen']['p@1']:.1f} / "
            f"unseen {100 * r['lama_unseen']['p@1']:.1f}" + (
                f"; with retrieval seen {100 * r['lama_seen_retrieval']['p@1']:.1f} / unseen "
                f"{100 * r['lama_unseen_retrieval']['p@1']:.1f}" if realm is not None else ""))
    times["evaluate_s"] = time.perf_counter() - t0
    return res


# ---- report -----------------------------------------------------------------------------------------------------


def markdown(args, paths: dict, runs: dict, plan: dict, ev: dict, ft: dict, times: dict) -> str:
    build = json.loads((Path(args.out) / "kg" / "build.json").read_text())
    sentences = len(Path(paths["text"]).read_text().splitlines())
    r = plan["rows"]["realm"]
    def p1(e: dict, key: str) -> str:
        return f"{100 * e[key]['p@1']:.1f} (of {e[key]['asked']:,})" if key in e else "–"

    lines = [
        f"| model | steps | training FLOPs / step | pre-train min | held-out MLM loss | LAMA P@1 seen: reader alone | "
        f"seen: with retrieval | unseen: reader alone | unseen: with retrieval | relation classification acc. "
        f"(n={len(args.ft_seeds)}) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for row, e in ev.items():
        run = runs[row]
        lines.append(f"| {LABELS[row]} | {run['steps']:,} | {run['total_step_flops']:.3g} | {run['wall_s'] / 60:.1f} "
                     f"| {e['mlm_heldout']:.3f} | {p1(e, 'lama_seen')} | {p1(e, 'lama_seen_retrieval')} | "
                     f"{p1(e, 'lama_unseen')} | {p1(e, 'lama_unseen_retrieval')} | {kp._pm(ft.get(row, []))} |")
    lines.append(f"| {LABELS['random']} | 0 | – | 0 | – | – | – | – | – | {kp._pm(ft.get('random', []))} |")
    ret = ev["realm"]["retrieval"]
    lines += ["", f"{args.preset} reader (MiniLM's 30,522-token WordPiece vocabulary) pre-trained on {sentences:,} "
              f"evidence sentences of the {build['train_triples']:,} training facts; equal compute: "
              f"{args.budget:,} realm steps = {plan['budget_flops']:.3g} training FLOPs per row (FlopCounterMode). A "
              f"realm step costs {r['step_flops']:.3g} FLOPs (reader over 5 rows + the query encoder) + "
              f"{plan['refresh']['per_step']:.3g} for index refreshes ({plan['refresh']['passages']:,} passages "
              f"re-embedded every {args.refresh_every} steps, {plan['refresh']['refresh_flops']:.3g} FLOPs each) = "
              f"{r['total_step_flops'] / plan['rows']['mlm' if 'mlm' in runs else 'realm']['total_step_flops']:.1f}x "
              "an MLM step. LAMA: single-token objects of the vocabulary, training facts (seen: their evidence "
              "sentences were pre-trained on and are in the index) and held-out facts (unseen: their sentences are "
              "in neither); reader alone = the masked LM at the blank; with retrieval = REALM's reader marginalised "
              f"over the k = {ret['k']} passages{' + the null passage' if ret['null_passage'] else ''} (τ = "
              f"{ret['temperature']:g}) that its trained query encoder retrieves from the {ret['passages']:,}-passage "
              "index as last refreshed, the pre-training marginal at the cloze's mask (recipes.realm.load_realm, "
              "REALM.mask_log_probs); the twins have no retriever. Held-out MLM loss (reader alone) on the held-out "
              "facts' sentences. Relation classification: held-out facts' sentences, 28 relations, ptm finetune. "
              f"Scale: a 4-layer, 256-wide reader and a few CPU-hours; REALM pre-trained BERT-base for 200k steps "
              f"on TPUs. Total {times['total_s'] / 60:.0f} min; measured {date.today().isoformat()} with "
              f"`python experiments/realm.py{' ' + shlex.join(args.given) if args.given else ''}`."]
    return "\n".join(lines)


def estimate(args, runs: dict, plan: dict, times: dict) -> dict:
    """Minutes of the default study on this machine as loaded now: pre-training from this run's seconds per step
    (realm's refreshes scaled by passages), fine-tuning by example-epochs, LAMA by facts, data by sentences."""
    full = parse_args([])
    all_sent = json.loads((Path(args.out) / "kg" / "build.json").read_text())["sentences"]["text-train.jsonl"]
    sent = len(Path(args.out, "text-train.jsonl").read_text().splitlines())
    scale = {r: full.budget * (runs["realm"]["step_flops"] + plan["refresh"]["per_step"] * all_sent / sent
                               * args.refresh_every / full.refresh_every) / runs[r]["total_step_flops"]
             for r in runs}
    scale["realm"] = full.budget
    # realm's wall time = steps + refreshes, each a re-embedding as long as the index build (timed in its manifest)
    embed_s = json.loads((Path(args.out) / "index" / "manifest.json").read_text())["build_seconds"]
    refreshes = lambda steps, every: steps // every if every else 0  # noqa: E731
    realm_step_s = max(0.0, runs["realm"]["wall_s"] - refreshes(runs["realm"]["steps"], args.refresh_every) * embed_s
                       ) / runs["realm"]["steps"]
    pre = sum(runs[r]["wall_s"] / runs[r]["steps"] * scale[r] for r in runs if r != "realm")
    pre += realm_step_s * full.budget + refreshes(full.budget, full.refresh_every) * embed_s * all_sent / sent
    ft = times.get("finetune_s", 0.0) * (full.ft_train * full.ft_epochs * len(full.ft_seeds)) / (
        args.ft_train * args.ft_epochs * len(args.ft_seeds))
    ev = times.get("evaluate_s", 0.0) * (22881 / (2 * args.lama_max) if args.lama_max else 1.0)
    prep = times["prepare_s"] * all_sent / sent
    return {k: round(v / 60, 1) for k, v in {"prepare": prep, "pretrain": pre, "evaluate": ev, "finetune": ft}.items()
            } | {"total": round((prep + pre + ev + ft) / 60, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    torch.manual_seed(0)
    paths = prepare(args, times)
    runs, plan = run_pretraining(args, paths, times)
    ev = run_evaluation(args, paths, runs, times)
    ft = kp.run_finetuning(args, paths, runs, times, random_from="mlm" if "mlm" in runs else "realm")
    times["total_s"] = time.perf_counter() - t0
    block = markdown(args, paths, runs, plan, ev, ft, times)
    print(block)
    result = {"experiment": "realm", "steps": {r: runs[r]["steps"] for r in runs},
              "budget_flops": plan["budget_flops"], "mlm_heldout": {r: ev[r]["mlm_heldout"] for r in ev},
              "lama_p@1": {r: {s: ev[r][f"lama_{s}"]["p@1"] for s in ("seen", "unseen")} for r in ev},
              "lama_p@1_with_retrieval": {s: ev["realm"][f"lama_{s}_retrieval"]["p@1"] for s in ("seen", "unseen")},
              "relation_acc": ft, "times": {k: round(v, 1) for k, v in times.items()}}
    if args.smoke:
        result["estimated_full_min"] = estimate(args, runs, plan, times)
        log(f"estimated default study on this machine as loaded now: {result['estimated_full_min']} min")
    atomic.write_text(Path(args.out) / "results.json",
                      json.dumps({**result, "runs": runs, "plan": plan, "evaluation": ev}, indent=2) + "\n")
    if args.docs:
        write_results_block(args.docs, block, "Knowledge and memory", name="realm")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
