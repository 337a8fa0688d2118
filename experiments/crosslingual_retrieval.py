"""Survey §5.1 (XLM, Conneau & Lample 2019): does translation LM (TLM) align languages beyond multilingual MLM?

Trains two small BERTs from the same initialisation for the same number of updates on Multi30k train (en/de/fr):
  A. MMLM only;   B. MMLM + TLM, alternating batches.
Then scores cross-lingual sentence retrieval (mean-pooled hidden states, cosine, top-1 among all candidates):
en<->de on test_2016_flickr (1,000 aligned sentences; it has no French) and en<->fr / en<->de on the last
`--heldout` aligned rows of train, which are kept out of tokenizer and model training. Chance is 1/N.

    OMP_NUM_THREADS=1 python experiments/crosslingual_retrieval.py --steps 1200 --layers 4 --seeds 0,1,2

Each seed (initialisation, data order and masking) is one pair of runs; its numbers are kept in --out as
seed<N>.json, so a rerun only trains the seeds it lacks. The table gives mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ptmkit.analysis.crosslingual import mean_pool, retrieval_accuracy
from ptmkit.data.multilingual import ParallelCorpus, read_aligned
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.config import from_dict
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints  # noqa: E402

LANGS = ("en", "de", "fr")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=1200, help="updates per model (same for both)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per update (TLM rows hold two sentences)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4000, help="shared WordPiece vocabulary size")
    p.add_argument("--max-len", type=int, default=32, help="tokens per sentence incl. [CLS]/[SEP]")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of steps of linear warm-up")
    p.add_argument("--heldout", type=int, default=1000, help="last aligned train rows kept out for en-fr retrieval")
    p.add_argument("--seeds", type=ints, default="0,1,2", help="comma list of seeds; each trains both models from its own init")
    p.add_argument("--out", default="runs/crosslingual", help="folder for seed<N>.json (kept: a rerun reuses them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; on a shared CPU more threads can be far slower")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N aligned train rows")
    args = p.parse_args(argv)
    if not args.seeds:
        p.error("--seeds names no seed")
    return args


@torch.no_grad()
def embed(model, corpus: ParallelCorpus, lang: int, layers: list[int], bs: int = 250) -> dict[int, torch.Tensor]:
    """Mean-pooled hidden states of every sentence of one language, alone, with its language id."""
    model.eval()
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for i in range(0, corpus.n, bs):
        b = corpus.sentences(lang, torch.arange(i, min(i + bs, corpus.n)))
        hs = model.backbone(b["input_ids"], b["attention_mask"], b["lang_ids"], b["position_ids"],
                            output_hidden_states=True).hidden_states  # embeddings, then each layer
        for l in layers:
            out[l].append(mean_pool(hs[l], b["attention_mask"]))
    model.train()
    return {l: torch.cat(v) for l, v in out.items()}


def evaluate(model, sets: dict[str, ParallelCorpus], layers: list[int]) -> dict[str, float]:
    res = {}
    for set_name, corpus in sets.items():
        embs = {lang: embed(model, corpus, corpus.langs.index(lang), layers) for lang in corpus.langs}
        for a in corpus.langs:
            for b in corpus.langs:
                if a == b or "en" not in (a, b):
                    continue
                for l in layers:
                    res[f"{set_name}/{a}->{b}/layer{l}"] = retrieval_accuracy(embs[a][l], embs[b][l])
    return res


def train_one(name: str, use_tlm: bool, corpus: ParallelCorpus, tok: Tokenizer, args, seed: int) -> tuple[object, dict]:
    torch.manual_seed(seed)  # same initialisation for both models
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=args.hidden, num_layers=args.layers,
                                   num_heads=args.heads, intermediate_size=4 * args.hidden,
                                   max_position_embeddings=args.max_len, type_vocab_size=len(LANGS),
                                   pad_token_id=tok.pad_id, dropout=0.1, attention_dropout=0.1))
    model = build_model("bert", cfg, "masked-lm")
    common = dict(mask_token_id=tok.mask_id, vocab_size=tok.vocab_size, special_token_ids=tok.all_special_ids,
                  num_languages=len(LANGS))
    mmlm = OBJECTIVES["mmlm"][1](from_dict(OBJECTIVES["mmlm"][0], common))
    tlm = OBJECTIVES["tlm"][1](from_dict(OBJECTIVES["tlm"][0], common))
    for obj in (mmlm, tlm):
        obj.bind(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = max(1, int(args.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (args.steps - s) / max(1, args.steps - warm))))
    data_gen = torch.Generator().manual_seed(seed + 1)  # same MMLM stream order for both models' draws
    t0, tokens, log = time.perf_counter(), 0, {"mmlm": [], "tlm": []}
    for step in range(args.steps):
        kind = "tlm" if use_tlm and step % 2 == 1 else "mmlm"
        raw = corpus.tlm_batch(args.batch_size, data_gen) if kind == "tlm" else corpus.mmlm_batch(args.batch_size, data_gen)
        obj = tlm if kind == "tlm" else mmlm
        batch = obj.corrupt(raw, seeded_generator(seed, step))
        loss, m = obj.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(raw["attention_mask"].sum())
        log[kind].append(m["loss"])
        if (step + 1) % max(1, args.steps // 6) == 0:
            recent = {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in log.items() if v}
            print(f"[{name}] step {step + 1}/{args.steps} " + " ".join(f"{k}_loss={v:.3f}" for k, v in recent.items())
                  + f" {time.perf_counter() - t0:.0f}s", flush=True)
    info = {"wall_s": round(time.perf_counter() - t0, 1), "tokens": tokens,
            "final_mmlm_loss": round(sum(log["mmlm"][-50:]) / len(log["mmlm"][-50:]), 3)}
    if log["tlm"]:
        info["final_tlm_loss"] = round(sum(log["tlm"][-50:]) / len(log["tlm"][-50:]), 3)
    return model, info


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train = read_aligned("train", LANGS)
    cut = len(train["en"]) - args.heldout
    held = {l: v[cut:] for l, v in train.items()}
    train = {l: v[: min(cut, args.train_limit or cut)] for l, v in train.items()}
    test = read_aligned("test_2016_flickr", ("en", "de"))
    tok = Tokenizer.train([s for v in train.values() for s in v], "wordpiece", args.vocab)
    corpus = ParallelCorpus(train, tok, args.max_len)
    # evaluation corpora keep the model's language ids: en=0, de=1, fr=2 (test has no fr)
    sets = {"test2016": ParallelCorpus(test, tok, args.max_len), "heldout": ParallelCorpus(held, tok, args.max_len)}
    print(f"[setup] vocab {tok.vocab_size}, {corpus.n} aligned train rows x {len(LANGS)} languages, "
          f"{corpus.flat.numel()} train tokens, {time.perf_counter() - t_start:.0f}s", flush=True)
    layers = sorted({args.layers // 2, args.layers})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("seeds", "out", "threads")}
    per_seed = {}
    for seed in args.seeds:
        path = out / f"seed{seed}.json"
        if path.exists() and json.loads(path.read_text())["settings"] == settings:
            per_seed[seed] = json.loads(path.read_text())
            print(f"[seed {seed}] reusing {path}", flush=True)
            continue
        per_seed[seed] = run_seed(seed, args, corpus, tok, sets, layers) | {"settings": settings}
        path.write_text(json.dumps(per_seed[seed], indent=1) + "\n")
    table = summarise([per_seed[s]["retrieval"] for s in args.seeds])
    print("\n" + markdown(table, layers, args))
    summary = {"experiment": "crosslingual_retrieval", "date": date.today().isoformat(), "args": vars(args),
               "chance": 1.0 / args.heldout, "seeds": {s: {"train": r["train"], "retrieval": r["retrieval"]}
                                                        for s, r in per_seed.items()},
               "retrieval": {m: {k: v["mean"] for k, v in cells.items()} for m, cells in table.items()},
               "table": table, "total_wall_s": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(summary))
    return summary


MODELS = ("untrained", "mmlm", "mmlm+tlm")


def run_seed(seed: int, args, corpus, tok, sets, layers) -> dict:
    results, info = {}, {}
    for name, use_tlm in (("mmlm", False), ("mmlm+tlm", True)):
        model, info[name] = train_one(name, use_tlm, corpus, tok, args, seed)
        results[name] = evaluate(model, sets, layers)
        if name == "mmlm":  # the same initialisation, untrained: what architecture + lexical overlap alone give
            torch.manual_seed(seed)
            init = build_model("bert", model.backbone.config, "masked-lm")
            results["untrained"] = evaluate(init, sets, layers)
    return {"seed": seed, "train": info, "retrieval": results}


def summarise(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """model -> cell -> mean/std (per cent) over seeds; a cell's std is 0 with one seed."""
    def stat(xs):
        xs = [100 * x for x in xs]
        return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}

    return {m: {k: stat([r[m][k] for r in runs]) for k in sorted(runs[0][m])} for m in MODELS}


def markdown(table: dict, layers: list[int], args) -> str:
    n = next(iter(table["mmlm"].values()))["n"]
    lines = [f"| set / direction / layer | " + " | ".join(MODELS) + " |", "|" + "---|" * (1 + len(MODELS))]
    for k in table["mmlm"]:
        lines.append(f"| {k} | " + " | ".join(f"{table[m][k]['mean']:.2f} ± {table[m][k]['std']:.2f}" for m in MODELS)
                     + " |")
    for layer in layers:  # the mean over every set and direction at one layer
        cells = [k for k in table["mmlm"] if k.endswith(f"/layer{layer}")]
        lines.append(f"| **mean, layer {layer}** | " + " | ".join(
            f"**{statistics.fmean(table[m][k]['mean'] for k in cells):.2f}**" for m in MODELS) + " |")
    lines += ["", f"Top-1 retrieval accuracy (%), mean ± std over {n} seed(s) {args.seeds}; chance "
                  f"{100 / args.heldout:.1f}%."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
