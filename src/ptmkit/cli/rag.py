"""`ptm rag train|generate`: retrieval-augmented generation (Lewis et al. 2020) over a `ptm index build` index.
Thin layer over ptmkit.recipes.rag."""

from __future__ import annotations

import argparse
import json

from ptmkit.cli.formatting import Defaults


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rag", help="retrieval-augmented generation: fine-tune (generator + query encoder) or "
                                          "answer with retrieved passages",
                              description="RAG-sequence / RAG-token with a causal-LM generator over a passage index.")
    actions = p.add_subparsers(dest="rag_action", metavar="ACTION")
    actions.required = True
    from ptmkit.cli.overrides import describe
    from ptmkit.objectives.rag import RAGConfig
    from ptmkit.recipes.rag import RagRunConfig

    t = actions.add_parser(
        "train", help="fine-tune on question/answer JSON lines (YAML recipe + dotted overrides)",
        description="Fine-tune the generator and the query encoder through the training engine (document vectors "
                    "fixed); writes OUT/generator, OUT/query_encoder, metrics.jsonl and loss.png. The training data "
                    "(train:) is JSON lines {\"question\": ..., \"answer\": ...}. Every key below can be given as "
                    "--KEY VALUE, e.g. --engine.steps 50 --optim.lr 3e-5 --objective.k 3.",
        epilog="config keys:\n" + "\n".join(describe(RagRunConfig))
        + "\n\nobjective keys:\n" + "\n".join(describe(RAGConfig, "objective.")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", default=None, help="YAML recipe (fields of ptmkit.recipes.rag.RagRunConfig)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    t.set_defaults(accepts_overrides=True)
    g = actions.add_parser("generate", help="answer questions, printing the retrieved passages",
                           formatter_class=Defaults)
    g.add_argument("generator", help="causal-LM model directory with its tokenizer (e.g. runs/smollm2)")
    g.add_argument("--index", required=True, metavar="DIR", help="passage index (`ptm index build`)")
    g.add_argument("--query-encoder", default=None, metavar="DIR",
                   help="a trained query encoder (a RAG run's OUT/query_encoder); default: the index's encoder")
    g.add_argument("--question", action="append", required=True, help="repeat for a batch")
    g.add_argument("--k", type=int, default=3, help="passages retrieved per question (training's objective.k defaults to 5)")
    g.add_argument("--marginalise", choices=("sequence", "token"), default="sequence",
                   help="RAG-sequence (one passage per answer) or RAG-token (per token) marginalisation (Lewis et al. §2.1)")
    g.add_argument("--temperature", type=float, default=0.1, help="τ of p(z|x) = softmax(q·d / τ)")
    g.add_argument("--max-new-tokens", type=int, default=16, help="answer tokens generated at most")
    g.add_argument("--json", action="store_true", help="print one JSON object per question")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ptmkit.recipes import rag

    if args.rag_action == "train":
        from ptmkit.cli.overrides import build_config, parse_dotted

        cfg = build_config(rag.RagRunConfig, args.config, parse_dotted(getattr(args, "overrides", [])))
        s = rag.train_rag(cfg, resume=args.resume, overwrite=args.overwrite)
        print(json.dumps({k: s[k] for k in ("steps", "wall_s", "generator", "query_encoder") if k in s}, indent=2))
        return 0
    from ptmkit.retrieval.rag_generate import rag_generate

    model, objective = rag.load_rag(args.generator, args.index, args.query_encoder,
                                    {"k": args.k, "marginalise": args.marginalise, "temperature": args.temperature})
    for a in rag_generate(model, objective, args.question, max_new_tokens=args.max_new_tokens):
        if args.json:
            print(json.dumps({"question": a.question, "answer": a.answer, "passages": [
                {"id": p.id, "doc": p.doc, "p": round(pr, 4), "text": p.text} for p, pr in zip(a.passages, a.probs)]}))
            continue
        print(f"Q: {a.question}\nA: {a.answer.strip()}")
        for rank, (psg, pr) in enumerate(zip(a.passages, a.probs), 1):
            print(f"  [{rank}] p={pr:.3f} doc {psg.doc}: {psg.text}")
    return 0
