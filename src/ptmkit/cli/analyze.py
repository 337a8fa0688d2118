"""`ptm analyze ANALYSIS MODEL --out DIR`: what a pre-trained model knows and how reliable it is (survey §7). One
sub-command per analysis; each is a thin layer over ptmkit.recipes.analyze."""

from __future__ import annotations

import argparse
import json

from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="understand a model: probing, CKA, attention and syntax, perturbed masking, LAMA, heads, lottery tickets, "
             "attacks and defence, calibration",
        description=("Run one analysis on MODEL (any ptmkit or Hugging Face model directory; it is never changed) and "
                     "write OUT/results.json and a plot. `ptm analyze ANALYSIS --help` lists each one's options."),
        formatter_class=Defaults,
    )
    kinds = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    kinds.required = True

    def common(q):
        q.add_argument("model", help="model directory")
        q.add_argument("--out", required=True, help="folder for results.json and the plot")

    q = kinds.add_parser("lama", help="LAMA cloze probes: a masked LM fills the blank, a causal LM ranks the relation's "
                                             "objects; P@1, P@10, MRR per relation",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--facts", nargs="+", required=True,
                   help="LAMA relation files (JSON lines, plain or .gz), e.g. <data root>/lama/TREx/*.jsonl.gz")
    q.add_argument("--relations", default=None, help="LAMA's relations.jsonl: each relation's template")
    q.add_argument("--template", default=None, help="one template for every file, e.g. '[X] was born in [Y] .'")
    q.add_argument("--vocab", default=None, help="a common vocabulary (one token a line): objects and ranks within it (masked LMs only)")
    q.add_argument("--batch-size", type=int, default=64, help="queries per batch")
    q.add_argument("--mined", type=int, default=0,
                   help="prompt search: mine this many templates from the facts' evidence sentences (LPAQA), pick the "
                        "best on half the facts, ensemble them, and score both on the other half (masked LMs only)")
    q.add_argument("--autoprompt", type=int, default=0,
                   help="prompt search: this many trigger tokens found by AutoPrompt's gradient search on half the facts "
                        "(masked LMs only)")
    q.add_argument("--optiprompt", type=int, default=0,
                   help="prompt search: train this many continuous prompt vectors (OptiPrompt) on half the facts (masked "
                        "LMs only)")

    q = kinds.add_parser("attention", help="Clark et al.'s head statistics (entropy, distance, [CLS]/[SEP]/punct)",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--text", required=True, help="text file (plain or .gz), one sentence or passage a line")
    q.add_argument("--lines", type=int, default=200, help="lines used")
    q.add_argument("--max-length", type=int, default=128, help="tokens per line")

    q = kinds.add_parser("syntax", help="the best attention head per UD dependency relation vs a positional baseline",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--treebank", required=True, help="CoNLL-U treebank, e.g. <data root>/ud/en_ewt-ud-dev.conllu")
    q.add_argument("--max-sentences", type=int, default=500, help="sentences used")
    q.add_argument("--min-count", type=int, default=20, help="relations seen fewer times are left out")

    q = kinds.add_parser("perturbed", help="Perturbed Masking trees (Wu et al. 2020): UAS vs right-branching",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--treebank", required=True, help="CoNLL-U treebank, e.g. <data root>/ud/en_ewt-ud-dev.conllu")
    q.add_argument("--max-sentences", type=int, default=100, help="sentences used")
    q.add_argument("--max-words", type=int, default=30, help="longer sentences are left out (cost grows as words^2)")
    q.add_argument("--layer", type=int, default=-1, help="hidden-state layer (-1 = last)")

    q = kinds.add_parser("probe", help="linear probes per layer on a CoNLL-U treebank (UPOS, relations) or CoNLL-2003 "
                         "entity tags, with control tasks",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--train", required=True,
                   help="training file: a CoNLL-U treebank for upos/deprel (e.g. <data root>/ud/en_ewt-ud-train.conllu), "
                        "a CoNLL-2003 file for ner (e.g. <data root>/ner/conll2003/train.txt); plain or .gz")
    q.add_argument("--test", required=True, help="test file, in the same format as --train")
    q.add_argument("--transfer", default=None,
                   help="another language's file with the same labels to test the probe on (e.g. de_pud)")
    q.add_argument("--label", choices=["upos", "deprel", "ner"], default="upos",
                   help="what the probe predicts per word: UD part of speech, UD relation, or IOB2 entity tag")
    q.add_argument("--max-train", type=int, default=None, help="training sentences used (default all)")
    q.add_argument("--kind", choices=["linear", "mlp"], default="linear",
                   help="the probe: linear (a logistic regression) or mlp (one hidden layer)")
    q.add_argument("--cache", default=None, help="folder caching the extracted features (reused across runs)")

    q = kinds.add_parser("cka", help="linear CKA between layers (or two models) and anisotropy per layer",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--text", required=True, help="text file (plain or .gz), one sentence or passage a line")
    q.add_argument("--other", default=None, help="a second model directory with the same tokenizer")
    q.add_argument("--lines", type=int, default=200, help="lines used")
    q.add_argument("--max-length", type=int, default=128, help="tokens per line")

    q = kinds.add_parser("attack", help="word-substitution (TextFooler) or character (DeepWordBug) attack",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--task", default=None, help="task of the split (default: the one MODEL was fine-tuned on)")
    q.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    q.add_argument("--split", default="dev", help="split attacked")
    q.add_argument("--kind", choices=["word", "char"], default="word", help="word: TextFooler; char: DeepWordBug")
    q.add_argument("--synonyms", default=None, help="word-pair synonym file, e.g. <data root>/lexical/ppdb_synonyms.txt")
    q.add_argument("--treebank", default=None,
                   help="CoNLL-U treebank whose most frequent tags give the part-of-speech constraint")
    q.add_argument("--encoder", default=None, help="sentence encoder for the similarity constraint (e.g. MiniLM)")
    q.add_argument("--max-examples", type=int, default=200, help="texts attacked (a seeded subset)")
    q.add_argument("--max-perturbed", type=float, default=0.3, help="at most this fraction of a text's words changed")
    q.add_argument("--similarity", type=float, default=0.7, help="minimum cosine of sentence embeddings")

    q = kinds.add_parser("heads", help="head importance (Michel et al.) and the dev score as heads are removed",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--task", default=None, help="task (default: the one MODEL was fine-tuned on)")
    q.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    q.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                   help="fractions of heads removed")
    q.add_argument("--data-batches", type=int, default=8, help="training batches the importance is measured on")
    q.add_argument("--max-eval-examples", type=int, default=None, help="a seeded subset of the dev split")

    q = kinds.add_parser("lottery", help="lottery tickets (IMP with rewinding) vs random masks, Chen et al. 2020",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--task", required=True, help="the task the tickets are fine-tuned on")
    q.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    q.add_argument("--rounds", type=int, default=5, help="pruning rounds")
    q.add_argument("--prune-per-round", type=float, default=0.2, help="share of the remaining weights pruned a round")
    q.add_argument("--epochs", type=float, default=3.0, help="epochs of every fine-tuning run")
    q.add_argument("--lr", type=float, default=5e-5, help="learning rate of every fine-tuning run")
    q.add_argument("--max-train-examples", type=int, default=None, help="training examples of every run")
    q.add_argument("--no-random", action="store_true", help="skip the random-mask baseline")

    q = kinds.add_parser("defend", help="adversarial examples added to training as a defence, both models attacked",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--base-model", required=True, help="the pre-trained model the defended model is fine-tuned from")
    q.add_argument("--task", default=None, help="task (default: the one MODEL was fine-tuned on)")
    q.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    q.add_argument("--attack-train", type=int, default=200, help="training texts attacked to make adversarial data")
    q.add_argument("--attack-dev", type=int, default=200, help="dev texts both models are attacked on")
    q.add_argument("--synonyms", default=None, help="word-pair synonym file (PPDB's in the shared data)")
    q.add_argument("--treebank", default=None, help="CoNLL-U treebank for the part-of-speech constraint")
    q.add_argument("--encoder", default=None, help="sentence encoder for the similarity constraint")
    q.add_argument("--epochs", type=float, default=3.0, help="epochs of the defended model's fine-tuning")
    q.add_argument("--lr", type=float, default=1e-4, help="its learning rate")
    q.add_argument("--max-train-examples", type=int, default=None, help="its training examples (original ones)")

    q = kinds.add_parser("calibration", help="ECE, temperature scaling, MC dropout, out-of-distribution AUROC",
                         formatter_class=Defaults)
    common(q)
    q.add_argument("--task", default=None, help="task of the split (default: the one MODEL was fine-tuned on)")
    q.add_argument("--data-dir", default=None, help="the task's folder (default: <data root>/glue/<TASK>)")
    q.add_argument("--split", default="dev", help="labelled split: half fits the temperature, half is scored")
    q.add_argument("--ood-task", default=None, help="another task whose texts are out of distribution (e.g. cola)")
    q.add_argument("--ood-data-dir", default=None, help="that task's folder")
    q.add_argument("--ood-split", default="dev", help="that task's split")
    q.add_argument("--passes", type=int, default=10, help="Monte Carlo dropout samples")
    q.add_argument("--dropout", type=float, default=0.1, help="dropout rate while sampling")
    q.add_argument("--max-examples", type=int, default=None, help="a seeded subset of each split")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.analysis.probing import ProbeConfig
    from ptmkit.recipes import analyze

    a = args.analysis
    if a == "lama":
        r = analyze.lama(args.model, args.out, args.facts, args.relations, args.template, args.vocab, args.batch_size,
                         args.mined, args.optiprompt, args.autoprompt)
        print(f"LAMA over {len(r['relations'])} relation(s): " + json.dumps(r["macro"]))
    elif a == "attention":
        r = analyze.attention(args.model, args.out, args.text, args.lines, args.max_length)
        print(f"head statistics over {r['tokens']:,} tokens: " + ", ".join(r["statistics"]))
    elif a == "syntax":
        r = analyze.syntax(args.model, args.out, args.treebank, args.max_sentences, args.min_count)
        print("\n".join(f"{rel:10s} best head L{x['layer']}H{x['head']} ({x['direction']}) "
                        f"{x['best_head_accuracy']:.3f} vs offset "
                        f"{x['baseline_offset']:+d} {x['baseline_accuracy']:.3f} (n={x['count']})"
                        for rel, x in r["relations"].items()))
    elif a == "perturbed":
        r = analyze.perturbed(args.model, args.out, args.treebank, args.max_sentences, args.max_words, args.layer)
        print(f"Perturbed Masking UAS {r['uas']:.3f} ({r['uas_gold_root']:.3f} with the gold root) vs right-branching "
              f"{r['right_branching_uas']:.3f} over "
              f"{r['words']:,} words of {r['sentences']} sentences")
    elif a == "probe":
        r = analyze.probe(args.model, args.out, args.train, args.test, args.label, args.transfer, args.max_train,
                          ProbeConfig(kind=args.kind), args.cache)
        best = max(r["curve"], key=lambda x: x["accuracy"])
        print(f"{args.label} probe: best layer {best['layer']} accuracy {best['accuracy']:.3f} (selectivity "
              f"{best['selectivity']:.3f})")
    elif a == "attack":
        from ptmkit.analysis.robustness import AttackConfig

        r = analyze.attack(args.model, args.out, args.task, args.data_dir, args.split, args.kind, args.synonyms,
                           args.treebank, args.encoder, args.max_examples,
                           AttackConfig(max_perturbed=args.max_perturbed, similarity=args.similarity))
        print(f"{args.kind} attack: accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}, success "
              f"{r['success_rate']:.1%}, {r['mean_queries']:.0f} queries, {r['perturbed_words_pct']:.1f}% words")
    elif a == "heads":
        r = analyze.heads(args.model, args.out, args.task, args.data_dir, tuple(args.fractions), args.data_batches,
                          args.max_eval_examples)
        print("heads removed -> dev: " + ", ".join(f"{c['fraction']:.0%} {list(c.values())[1]:.3f}" for c in r["curve"]))
    elif a == "lottery":
        r = analyze.lottery(args.model, args.out, args.task, args.rounds, args.prune_per_round, args.data_dir,
                            {"epochs": args.epochs, "lr": args.lr, "max_train_examples": args.max_train_examples},
                            not args.no_random)
        print("sparsity -> ticket / random: " + ", ".join(
            f"{c['sparsity']:.0%} {c['ticket']:.3f}/{c.get('random', float('nan')):.3f}" for c in r["curve"]))
    elif a == "defend":
        r = analyze.defend(args.model, args.base_model, args.out, args.task, args.data_dir, args.attack_train,
                           args.attack_dev, args.synonyms, args.treebank, args.encoder,
                           {"epochs": args.epochs, "lr": args.lr, "max_train_examples": args.max_train_examples})
        print(f"{r['adversarial_training_examples']} adversarial training texts; attack success "
              f"{r['original']['success_rate']:.1%} -> {r['defended']['success_rate']:.1%}, accuracy under attack "
              f"{r['original']['accuracy_after']:.3f} -> {r['defended']['accuracy_after']:.3f}")
    elif a == "calibration":
        r = analyze.calibration(args.model, args.out, args.task, args.data_dir, args.split, args.ood_task,
                                args.ood_data_dir, args.ood_split, args.passes, args.dropout, args.max_examples)
        print(f"ECE {r['plain']['ece']:.4f} -> {r['temperature_scaled']['ece']:.4f} with T = {r['temperature']:.2f}; "
              f"MC dropout ECE {r['mc_dropout']['ece']:.4f}" + (f"; OOD AUROC {r['ood']['auroc_msp']:.3f}"
                                                                  if "ood" in r else ""))
    else:
        r = analyze.cka(args.model, args.out, args.text, args.other, args.lines, args.max_length)
        print(f"CKA over {r['tokens']:,} tokens; anisotropy per layer: "
              + ", ".join(f"{x:.2f}" for x in r["anisotropy"]))
    print(f"wrote {args.out}/results.json")
    return 0
