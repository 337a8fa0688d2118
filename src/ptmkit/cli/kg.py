"""`ptm kg build|transe|link`: knowledge graphs for knowledge-enhanced pre-training (docs/knowledge.md).
Thin layer over ptmkit.recipes.knowledge."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("kg", help="knowledge graphs: build from LAMA, train TransE, link a corpus's entities",
                              description="Knowledge graphs for ERNIE / KEPLER pre-training (docs/knowledge.md).")
    actions = p.add_subparsers(dest="kg_action", metavar="ACTION")
    actions.required = True

    b = actions.add_parser("build", help="the LAMA T-REx graph (train / held-out triples) and its evidence text",
                           description="Write OUT/kg (entities, relations, triples, descriptions) and the evidence "
                                       "sentences of its training and held-out facts (OUT/text-*.jsonl, for "
                                       "`ptm data prepare`).")
    b.add_argument("--lama", default=None, metavar="DIR", help="LAMA directory (default: <data root>/lama)")
    b.add_argument("--held-out", type=float, default=0.2, help="fraction of facts held out (default 0.2)")
    b.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder: DIR/kg and DIR/text-*.jsonl")

    t = actions.add_parser("transe", help="train TransE on a graph's training triples (YAML recipe + overrides)",
                           description="Train TransE (Bordes et al. 2013) through the training engine; scores "
                                       "filtered MRR / Hits@k on the held-out triples and writes OUT/embeddings "
                                       "(entity_embeddings.safetensors: ERNIE's model.config.entity_embeddings).",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", default=None, help="YAML recipe, e.g. configs/transe-lama.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    t.set_defaults(accepts_overrides=True)

    k = actions.add_parser("link", help="link a prepared corpus's entities once (ERNIE's data.entities)",
                           description="Dictionary entity linking of every token of a shard directory with the "
                                       "graph's entity labels; writes the per-token entity stream pre-training reads.")
    k.add_argument("--shards", required=True, metavar="DIR", help="token shards (`ptm data prepare`)")
    k.add_argument("--kg", required=True, metavar="DIR", help="knowledge-graph directory (`ptm kg build`)")
    k.add_argument("--tokenizer", required=True, metavar="DIR", help="the tokenizer the shards were prepared with")
    k.add_argument("--out", required=True, metavar="DIR", help="folder for the per-token entity stream")
    k.add_argument("--max-len", type=int, default=8, help="longest entity name, in tokens (default 8)")
    k.add_argument("--overwrite", action="store_true", help="replace a linking already in --out")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ptmkit.recipes import knowledge

    if args.kg_action == "build":
        from ptmkit.data.paths import data_root

        info = knowledge.build_lama_kg(args.out, args.lama or data_root() / "lama", args.held_out, args.seed)
        print(json.dumps(info, indent=2))
    elif args.kg_action == "transe":
        from ptmkit.cli.overrides import build_config, parse_dotted

        cfg = build_config(knowledge.TransERunConfig, args.config, parse_dotted(getattr(args, "overrides", [])))
        s = knowledge.train_transe(cfg, resume=args.resume, overwrite=args.overwrite)
        print(json.dumps({k: s[k] for k in ("steps", "wall_s", "link_prediction", "embeddings") if k in s}, indent=2))
    else:
        info = knowledge.link_shards(args.shards, args.kg, args.tokenizer, args.out, args.max_len, args.overwrite)
        print(json.dumps(info, indent=2))
    return 0
