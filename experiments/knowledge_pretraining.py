"""Survey §5.3 (knowledge-enhanced PTMs): does knowledge from a graph help a small encoder, against the same encoder
trained on the same text with the same training compute and no knowledge? ERNIE (Zhang et al. 2019: TransE entity
vectors fused into the tokens, MLM + dEA) and KEPLER (Wang et al. 2021: MLM + knowledge embedding over the encoder's
own encodings of entity descriptions), measured on LAMA and on a downstream relation-classification task.

Everything comes from the shared LAMA T-REx data (ptmkit.data.kg): a knowledge graph of its facts with 20% of them
held out; the pre-training text is the evidence sentences of the training facts (a sentence that is also evidence
of a held-out fact is left out); TransE is trained on the training triples; entities are linked once by dictionary.

    rows          bert: BERT-mini (4 x 256) with MLM (the model without knowledge; ERNIE with no entity input is
                  exactly this model). ernie: 2 BERT + 2 aggregator layers, MLM + dEA with TransE vectors.
                  ernie-untrained-kg: the same with untrained TransE vectors (same scale, no relational knowledge).
                  kepler: BERT-mini with MLM + KE. Equal compute: each row trains for the FLOPs of `--budget` steps
                  of bert, counted by torch's FlopCounterMode on a real step of each (the KE encodings and the
                  aggregators are paid for; the CPU's fused attention kernel counts zero for every row alike).
    LAMA          P@1 of the relation's cloze template, single-token objects of the tokenizer, over the training
                  facts (their sentences were read in pre-training, their triples were in the graph) and the
                  held-out facts (neither); ERNIE also with the template's entities linked (the subject's vector).
    held-out MLM  masked-LM loss on the held-out facts' sentences, the same masks for every model.
    downstream    relation classification (28 LAMA relations) of held-out facts' evidence sentences given the
                  subject and object; ptm finetune (text only: ERNIE runs its plain path), plus a randomly
                  initialised BERT-mini, over --ft-seeds.

    python experiments/knowledge_pretraining.py            # the study, ~40-60 min on 2 CPU cores (printed)
    python experiments/knowledge_pretraining.py --smoke    # minutes: every stage, capped; writes no docs

Finished stages are skipped when the command is repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ptmkit.analysis.knowledge import Fact, probe_masked_lm, templates
from ptmkit.analysis.report import write_results_block
from ptmkit.cli.overrides import build_config
from ptmkit.data.annotations import annotated
from ptmkit.data.batches import PretrainBatches, fixed_batches
from ptmkit.data.kg import HELD_OUT, TRAIN, KnowledgeGraph, read_lama
from ptmkit.data.paths import data_root
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards, prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import load_model
from ptmkit.models.registry import PRESETS
from ptmkit.models.transe import TransE, TransEConfig, save_transe
from ptmkit.objectives import MaskedLM, MLMConfig
from ptmkit.objectives.linking import EntityLinker
from ptmkit.recipes.finetune import FinetuneConfig, finetune
from ptmkit.recipes.knowledge import TransERunConfig, build_lama_kg, link_shards, train_transe
from ptmkit.recipes.pretrain import PretrainConfig, plain_training_module, pretrain
from ptmkit.train.flops import measured_step_flops
from ptmkit.train.precision import Precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"bert": "configs/bert-mini-mlm.yaml", "ernie": "configs/ernie-mini.yaml",
           "ernie-untrained-kg": "configs/ernie-mini.yaml", "kepler": "configs/kepler-mini.yaml"}
LABELS = {"bert": "BERT-mini, MLM (no knowledge)", "ernie": "ERNIE, MLM + dEA, TransE entities",
          "ernie-untrained-kg": "ERNIE, MLM + dEA, untrained TransE entities", "kepler": "KEPLER, MLM + KE",
          "random": "no pre-training (BERT-mini, random init)"}
VOCAB = 12000


def add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """How every pre-trained row is judged (this study's and experiments/realm.py's): relation-classification
    fine-tuning, LAMA on the held-out facts, held-out MLM loss."""
    p.add_argument("--ft-seeds", type=ints, default=[0, 1], help="fine-tuning seeds")
    p.add_argument("--ft-train", type=int, default=4000, help="relation-classification training sentences")
    p.add_argument("--ft-dev", type=int, default=1000, help="relation-classification dev sentences")
    p.add_argument("--ft-epochs", type=float, default=3.0)
    p.add_argument("--ft-lr", type=float, default=3e-4, help="the demo's fine-tuning lr for BERT-mini")
    p.add_argument("--lama-max", type=int, default=None, help="facts per split asked (default: all)")
    p.add_argument("--eval-batches", type=int, default=32, help="held-out MLM batches of 32 x 128 tokens")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/knowledge", help="study folder (data, runs, results.json)")
    p.add_argument("--doc", default="docs/knowledge.md", help="page whose 'knowledge' results block is written")
    p.add_argument("--budget", type=int, default=1000, help="compute budget in pre-training steps of the bert row")
    p.add_argument("--rows", default="bert,ernie,ernie-untrained-kg,kepler", help="pre-trained rows")
    p.add_argument("--preset", default="bert-mini", choices=[n for n, (fam, _) in PRESETS.items() if fam == "bert"],
                   help="every row's encoder shape (ERNIE: half its layers knowledge layers)")
    p.add_argument("--batch-size", type=int, default=32, help="pre-training sequences (of 128 tokens) per step")
    add_evaluation_options(p)
    p.add_argument("--smoke", action="store_true",
                   help="every stage at a few steps / examples, in --out runs/knowledge-smoke; no docs written")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.rows if r not in CONFIGS]
    if bad or "bert" not in args.rows:
        p.error(f"--rows: choose from {sorted(CONFIGS)}, bert included (the budget is counted in its steps)")
    if args.smoke:
        args.out = args.out if args.out != "runs/knowledge" else "runs/knowledge-smoke"
        args.doc = str(Path(args.out) / "knowledge.md")
        smoke = dict(budget=8, ft_seeds=[0], ft_train=300, ft_dev=100, ft_epochs=1.0, lama_max=300, eval_batches=2)
        for key, value in smoke.items():  # the smoke's caps, where the command did not set its own
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def label(args, row: str) -> str:
    return LABELS[row].replace("BERT-mini", args.preset) if args.preset != "bert-mini" else LABELS[row]


def log(msg: str) -> None:
    print(f"[knowledge] {msg}", flush=True)


# ---- data: graph, text, tokenizer, shards, TransE, entity links ------------------------------------------------


def prepare(args, times: dict) -> dict[str, str]:
    out = Path(args.out)
    p = {"kg": str(out / "kg" / "kg"), "tokenizer": str(out / "tokenizer"), "train": str(out / "data" / "train"),
         "held": str(out / "data" / "held-out"), "train_links": str(out / "data" / "train-links"),
         "held_links": str(out / "data" / "held-out-links"), "transe": str(out / "transe" / "embeddings"),
         "untrained": str(out / "transe-untrained"), "text": str(out / "kg")}
    t0 = time.perf_counter()
    if not (out / "kg" / "build.json").exists():
        log("building the LAMA T-REx graph and its evidence text")
        build_lama_kg(out / "kg", data_root() / "lama")
    if not (Path(p["tokenizer"]) / "tokenizer.json").exists():
        log(f"training a {VOCAB:,}-token WordPiece tokenizer on the training facts' sentences")
        tok = Tokenizer.train([json.loads(x)["text"] for x in (out / "kg" / "text-train.jsonl").open()],
                              "wordpiece", VOCAB, model_max_length=128)
        tok.save(p["tokenizer"])
    for shards, text, links in (("train", "text-train.jsonl", "train_links"), ("held", "text-held-out.jsonl",
                                                                             "held_links")):
        if not (Path(p[shards]) / "meta.json").exists():
            prepare_shards(str(out / "kg" / text), p["tokenizer"], p[shards], progress=False, overwrite=True)
        if not (Path(p[links]) / "meta.json").exists():
            info = link_shards(p[shards], p["kg"], p["tokenizer"], p[links], overwrite=True)
            log(f"linked {shards}: {info['mentions']:,} mentions of {info['distinct_entities']:,} entities "
                f"({info['mentions_per_1k_tokens']:.0f} per 1k tokens) in {info['seconds']:.1f} s")
    if not (Path(p["transe"]) / "entity_embeddings.safetensors").exists():
        log("training TransE on the training triples (configs/transe-lama.yaml)")
        cfg = build_config(TransERunConfig, str(ROOT / "configs/transe-lama.yaml"),
                           {"kg": p["kg"], "out": str(out / "transe"), "train.progress_bar": False})
        train_transe(cfg, overwrite=True)
    if not (Path(p["untrained"]) / "entity_embeddings.safetensors").exists():  # the ablation's vectors
        kg = KnowledgeGraph.load(p["kg"])
        torch.manual_seed(0)
        dim = build_config(TransERunConfig, str(ROOT / "configs/transe-lama.yaml"), {}).model.dim
        save_transe(TransE(TransEConfig(kg.num_entities, kg.num_relations, dim)), p["untrained"],
                    {"kg_fingerprint": kg.fingerprint, "note": "TransE's initialisation, never trained"})
    times["prepare_s"] = time.perf_counter() - t0
    return p


# ---- pre-training at equal compute ------------------------------------------------------------------------------


def pretrain_config(args, row: str, paths: dict, steps: int) -> PretrainConfig:
    over = {"data.train": paths["train"], "data.eval": paths["held"], "data.tokenizer": paths["tokenizer"],
            "data.seq_len": 128, "data.boundary": "cross", "data.batch_size": args.batch_size, "data.eval_batches": 4,
            "train.steps": steps, "train.eval_every": 0, "train.checkpoint_every": max(50, steps // 4),
            "train.progress_bar": False, "train.seed": 0, "schedule.warmup_steps": max(1, steps // 10),
            "schedule.decay": "linear", "out": str(Path(args.out) / "pretrain" / row)}
    if row.startswith("ernie"):
        shape = PRESETS[args.preset][1]  # ERNIE's config names the shape itself (2 + 2 layers at bert-mini)
        over.update({f"model.config.{k}": v for k, v in shape.items()})
        over["model.config.num_knowledge_layers"] = max(1, shape["num_layers"] // 2)
    else:
        over["model.preset"] = args.preset
    if row.startswith("ernie"):
        over.update({"data.entities": paths["train_links"], "data.eval_entities": paths["held_links"],
                     "model.config.entity_embeddings": paths["transe" if row == "ernie" else "untrained"]})
    if row == "kepler":
        over["objective.params.kg"] = paths["kg"]
    return build_config(PretrainConfig, str(ROOT / CONFIGS[row]), over)


def step_flops(cfg: PretrainConfig, n: int = 3) -> float:
    """Training FLOPs of one step of this configuration, measured on real batches (averaged: MLM scores a random
    number of positions)."""
    tok = Tokenizer.load(cfg.data.tokenizer)
    torch.manual_seed(0)
    module = plain_training_module(cfg, tok)
    data = annotated(PackedDataset(TokenShards(cfg.data.train, tok), cfg.data.seq_len, cfg.data.boundary,
                                   pad_id=tok.pad_id), cfg.data.entities)
    batches = PretrainBatches(data, cfg.data.batch_size, module.loss_fn)
    precision = Precision(cfg.train.precision, torch.device("cpu"))

    def step():
        with precision.autocast():
            loss, _ = module(next(batches))
        loss.backward()

    return sum(measured_step_flops(step) for _ in range(n)) / n


def run_pretraining(args, paths: dict, times: dict) -> dict[str, dict]:
    out = Path(args.out)
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    if plan.get("budget") != args.budget:
        plan = {"budget": args.budget, "rows": {}}
    for row in args.rows:
        if row not in plan["rows"]:
            plan["rows"][row] = {"step_flops": step_flops(pretrain_config(args, row, paths, 1))}
    base = plan["rows"]["bert"]["step_flops"]
    for row in args.rows:
        plan["rows"][row]["steps"] = max(1, round(args.budget * base / plan["rows"][row]["step_flops"]))
    out.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")
    log("equal compute: %.3g training FLOPs per row; steps %s" % (
        args.budget * base, {r: plan["rows"][r]["steps"] for r in args.rows}))
    runs = {}
    for row in args.rows:
        cfg = pretrain_config(args, row, paths, plan["rows"][row]["steps"])
        run = Path(cfg.out)
        if not (run / "summary.json").exists() or not (run / "model").exists():
            log(f"pre-training {row}: {cfg.train.steps} steps")
            pretrain(cfg, overwrite=True)  # an unfinished run restarts
        s = json.loads((run / "summary.json").read_text())
        runs[row] = {"dir": str(run / "model"), "steps": s["steps"], "wall_s": s["wall_s"],
                     "step_flops": plan["rows"][row]["step_flops"]}
        times[f"pretrain_{row}_s"] = s["wall_s"]
    return runs


# ---- evaluation -------------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_mlm(model, tok, paths: dict, entities: bool, n_batches: int) -> float:
    """Token-weighted masked-LM loss on the held-out sentences; the same masks for every model."""
    mlm = MaskedLM(MLMConfig(mask_token_id=tok.mask_id, vocab_size=tok.vocab_size,
                             special_token_ids=tok.all_special_ids))
    data = annotated(PackedDataset(TokenShards(paths["held"], tok), 128, "cross", pad_id=tok.pad_id),
                     paths["held_links"] if entities else None)
    total, count = 0.0, 0
    model.eval()
    for b in fixed_batches(data, 32, mlm, n_batches):
        where = b["labels"] != -100
        extra = {"entity_ids": b["entity_ids"]} if entities else {}
        logits = model(b["input_ids"], attention_mask=b["attention_mask"], score_positions=where, **extra).logits
        total += torch.nn.functional.cross_entropy(logits.float(), b["labels"][where], reduction="sum").item()
        count += int(where.sum())
    return total / count


def lama_facts(kg: KnowledgeGraph, split: int, cap: int | None) -> dict[str, list[Fact]]:
    rows = kg.part(split).tolist()
    if cap is not None and len(rows) > cap:
        rows = random.Random(0).sample(rows, cap)
    out: dict[str, list[Fact]] = {}
    for h, r, t in rows:
        out.setdefault(kg.relations[r], []).append(Fact(kg.labels[h], kg.labels[t]))
    return out


def lama(model, tok, facts: dict[str, list[Fact]], cloze: dict[str, str], inputs=None, retrieval=None) -> dict:
    """Micro-averaged P@1 / P@10 over every asked fact (single-token objects), and the macro mean of P@1 over
    relations. inputs (ERNIE's entities) / retrieval (REALM's retriever): as in analysis.knowledge.mask_log_probs."""
    asked = p1 = p10 = 0.0
    per_rel = []
    for rel, fs in sorted(facts.items()):
        m = probe_masked_lm(model, tok, fs, cloze[rel], inputs=inputs, retrieval=retrieval)
        if m["asked"]:
            asked += m["asked"]
            p1 += m["p@1"] * m["asked"]
            p10 += m["p@10"] * m["asked"]
            per_rel.append(m["p@1"])
    return {"asked": int(asked), "p@1": p1 / max(asked, 1), "p@10": p10 / max(asked, 1),
            "macro_p@1": statistics.fmean(per_rel) if per_rel else float("nan")}


def run_evaluation(args, paths: dict, runs: dict, times: dict) -> dict:
    t0 = time.perf_counter()
    tok = Tokenizer.load(paths["tokenizer"])
    kg = KnowledgeGraph.load(paths["kg"])
    cloze = templates(data_root() / "lama" / "relations.jsonl")
    facts = {s: lama_facts(kg, split, args.lama_max) for s, split in (("seen", TRAIN), ("unseen", HELD_OUT))}
    linker = EntityLinker.from_kg(kg, tok)
    link_inputs = lambda ids: {"entity_ids": linker(ids.cpu())[0].to(ids.device)}  # noqa: E731
    res = {}
    for row, run in runs.items():
        model = load_model(run["dir"])
        variants = [("", None)] + ([(" + linked entities", link_inputs)] if row.startswith("ernie") else [])
        for suffix, inputs in variants:
            r = {"mlm_heldout": heldout_mlm(model, tok, paths, inputs is not None, args.eval_batches)}
            for split, fs in facts.items():
                r[f"lama_{split}"] = lama(model, tok, fs, cloze, inputs)
            res[row + suffix] = r
            log(f"{row}{suffix}: held-out MLM {r['mlm_heldout']:.3f}, LAMA P@1 seen "
                f"{100 * r['lama_seen']['p@1']:.1f} / unseen {100 * r['lama_unseen']['p@1']:.1f}")
    times["evaluate_s"] = time.perf_counter() - t0
    return res


# ---- downstream: relation classification ------------------------------------------------------------------------


def relation_task(args, paths: dict) -> Path:
    """Evidence sentences of held-out facts (never read in pre-training), split by fact into train and dev:
    {"pair": "subject ; object", "sentence", "relation"}; dev keeps only relations the training split has."""
    d = Path(args.out) / "relations"
    if (d / "dev.jsonl").exists():
        return d
    kg, evidence = read_lama(data_root() / "lama")
    rows = {"train": [], "dev": []}
    for e in evidence:
        if kg.split[e.triple] != HELD_OUT:
            continue
        h, r, t = (int(x) for x in kg.triples[e.triple])
        part = "dev" if int(hashlib.sha256(str(e.triple).encode()).hexdigest(), 16) % 5 == 0 else "train"
        rows[part].append({"pair": f"{kg.labels[h]} ; {kg.labels[t]}", "sentence": e.text,
                           "relation": kg.relations[r]})
    rng = random.Random(0)
    train = rng.sample(rows["train"], min(args.ft_train, len(rows["train"])))
    labels = {x["relation"] for x in train}
    dev = [x for x in rows["dev"] if x["relation"] in labels]
    dev = rng.sample(dev, min(args.ft_dev, len(dev)))
    d.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("dev", dev)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in part))
    return d


def run_finetuning(args, paths: dict, runs: dict, times: dict, random_from: str = "bert") -> dict:
    """Every pre-trained row fine-tuned on relation classification, and a random initialisation of `random_from`'s
    architecture (experiments/realm.py reuses this with its own rows)."""
    t0 = time.perf_counter()
    data = relation_task(args, paths)
    models = {**{r: (run["dir"], "pretrained") for r, run in runs.items()},
              "random": (runs[random_from]["dir"], "random")}
    scores: dict[str, list[float]] = {}
    for row, (model_dir, init) in models.items():
        for seed in args.ft_seeds:
            out = Path(args.out) / "finetune" / row / f"seed{seed}"
            if not (out / "results.json").exists():
                log(f"fine-tuning {row} on relation classification, seed {seed}")
                finetune(FinetuneConfig(model=model_dir, task="table", init=init, data_dir=str(data), out=str(out),
                                        text_fields=["pair", "sentence"], label_field="relation", max_length=96,
                                        epochs=args.ft_epochs, lr=args.ft_lr, batch_size=32, seed=seed,
                                        precision="auto", device="cpu", overwrite=True, show_progress=False))
            res = json.loads((out / "results.json").read_text())
            scores.setdefault(row, []).append(100 * res["final"][res["main_metric"]])
            times[f"finetune_{row}_{seed}_s"] = res.get("wall_time_s", 0.0)
    times["finetune_s"] = time.perf_counter() - t0
    return scores


# ---- report -----------------------------------------------------------------------------------------------------


def _pm(vals: list[float]) -> str:
    if not vals:
        return "–"
    sd = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
    return f"{statistics.fmean(vals):.1f}{sd}"


def markdown(args, paths: dict, runs: dict, ev: dict, ft: dict, times: dict) -> str:
    build = json.loads((Path(args.out) / "kg" / "build.json").read_text())
    transe = json.loads((Path(paths["transe"]) / "transe.json").read_text())["link_prediction"]
    links = json.loads((Path(paths["train_links"]) / "meta.json").read_text())["info"]
    lines = [
        f"Measured {date.today().isoformat()} on this machine's CPU (`python experiments/knowledge_pretraining.py"
        f"{' --smoke' if args.smoke else ''}`), total {times['total_s'] / 60:.1f} min.",
        "",
        f"Graph: {build['entities']:,} entities, {build['relations']} relations, {build['train_triples']:,} training "
        f"and {build['held_out_triples']:,} held-out triples; pre-training text: "
        f"{build['sentences']['text-train.jsonl']:,} sentences. Entity links: {links['mentions']:,} mentions of "
        f"{links['distinct_entities']:,} entities ({links['mentions_per_1k_tokens']:.0f} per 1,000 tokens). "
        f"TransE (configs/transe-lama.yaml) on the held-out triples, filtered: MRR {transe['mrr']:.3f}, "
        f"Hits@1 {100 * transe['hits@1']:.1f}%, Hits@10 {100 * transe['hits@10']:.1f}%.",
        "",
        f"Equal compute: {args.budget} steps of the BERT row ({args.budget * runs['bert']['step_flops']:.3g} "
        "training FLOPs by FlopCounterMode); each row's steps fit that budget.",
        "",
        "| model | steps | pre-train min | held-out MLM loss | LAMA P@1 seen | LAMA P@1 unseen | "
        f"relation classification acc. (n={len(args.ft_seeds)}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in ev.items():
        row = name.split(" + ")[0]
        run = runs[row]
        ft_cell = _pm(ft.get(row, [])) if " + " not in name else "(text only)"
        lines.append(
            f"| {label(args, row)}{' + linked entities' if ' + ' in name else ''} | {run['steps']} | "
            f"{run['wall_s'] / 60:.1f} | {r['mlm_heldout']:.3f} | {100 * r['lama_seen']['p@1']:.1f} "
            f"(of {r['lama_seen']['asked']:,}) | {100 * r['lama_unseen']['p@1']:.1f} (of {r['lama_unseen']['asked']:,})"
            f" | {ft_cell} |")
    lines.append(f"| {label(args, 'random')} | 0 | 0 | – | – | – | {_pm(ft.get('random', []))} |")
    return "\n".join(lines)


def estimate(args, runs: dict, times: dict) -> float:
    """Minutes the default study takes on this machine, from the stages just measured: pre-training scaled from
    this run's seconds per step, fine-tuning from its seconds per example-epoch, LAMA from its facts."""
    full = parse_args([])
    pre = sum(run["wall_s"] / max(run["steps"], 1) * round(full.budget * runs["bert"]["step_flops"] /
                                                              run["step_flops"]) for run in runs.values())
    ft_scale = (full.ft_train * full.ft_epochs * len(full.ft_seeds)) / (args.ft_train * args.ft_epochs *
                                                                        len(args.ft_seeds))
    ft = times.get("finetune_s", 0.0) * ft_scale
    lama_scale = 22881 / (2 * args.lama_max) if args.lama_max else 1.0
    ev = times.get("evaluate_s", 0.0) * lama_scale
    return (times["prepare_s"] + pre + ft + ev) / 60


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    paths = prepare(args, times)
    runs = run_pretraining(args, paths, times)
    ev = run_evaluation(args, paths, runs, times)
    ft = run_finetuning(args, paths, runs, times)
    times["total_s"] = time.perf_counter() - t0
    block = markdown(args, paths, runs, ev, ft, times)
    print(block)
    results = {"args": {k: v for k, v in vars(args).items()}, "runs": runs, "evaluation": ev, "finetune": ft,
               "times": times}
    if args.smoke and args.preset == "bert-mini":  # another shape's seconds per step say nothing of the study's
        est = estimate(args, runs, times)
        results["estimated_full_min"] = est
        log(f"estimated time of the default study on this machine as loaded now: {est:.0f} min "
            f"(this smoke run: {times['total_s'] / 60:.1f} min)")
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_results_block(args.doc, block, "Knowledge and memory", name="knowledge")
    return results


if __name__ == "__main__":
    main()
