"""`ptm finetune MODEL --task TASK --out RUN`: fine-tune a model directory on GLUE, CoNLL-2003 or a table."""

from __future__ import annotations

import dataclasses
import json

from ptmkit.cli.options import add_precision_option
from ptmkit.adapt import METHODS
from ptmkit.cli.formatting import DefaultsRaw
from ptmkit.cli.overrides import describe, parse_dotted
from ptmkit.compress.distill import DISTILLERS
from ptmkit.config import ConfigError, from_dict
from ptmkit.recipes.finetune import TRAINING_COMPRESSION, FinetuneConfig
from ptmkit.train.optim import OPTIMIZERS

_D = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.default is not dataclasses.MISSING}


def _positive_or_none(text: str) -> int | None:
    """A positive count, or `none` for no limit (0 is refused by the config: it would mean nothing to train)."""
    return None if text.lower() == "none" else int(text)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model directory on a GLUE task, CoNLL-2003 NER or your own CSV/TSV/JSONL table",
        description=(
            "Load MODEL with a new task head, train it with length-bucketed batches, evaluate on the eval "
            "split every --eval-every steps (or each epoch), and keep the best model in OUT/best/. Writes "
            "OUT/config.json, metrics.jsonl, loss.png, checkpoints/ and results.json (dev metrics, majority baseline, "
            "time, examples/s)."
        ),
        formatter_class=DefaultsRaw,
        epilog=_methods_help(),
    )
    p.add_argument("model", help="model directory (config.json + model.safetensors + tokenizer files)")
    p.add_argument("--task", required=True,
                   help="sst2, cola, mrpc, stsb, qqp, mnli, qnli, rte, wnli, conll2003, or table")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--init", choices=["pretrained", "random"], default=_D["init"],
                   help="pretrained: start from MODEL's weights; random: from a freshly initialised model of MODEL's "
                        "architecture (its config.json and tokenizer; no weights read), seeded by --seed: the "
                        "baseline that shows what pre-training adds under the same recipe")
    p.add_argument("--dropout", type=float, default=_D["dropout"],
                   help="set every dropout rate of the model (hidden, attention, embedding) for fine-tuning; unset: "
                        "the rates in MODEL's config.json. A model pre-trained without dropout (Cramming) is usually "
                        "fine-tuned with 0.1")
    p.add_argument("--pooling", choices=["cls", "mean"], default=_D["pooling"],
                   help="sentence vector of the classifier: cls (BERT's first token) or mean (the masked mean of the "
                        "token vectors; MLM never trains [CLS]). Unset: a fine-tuned MODEL's own, else cls. The "
                        "generic encoder head only (bert, roberta, megatron-bert); transformers cannot run a mean-"
                        "pooled classifier, ptmkit can")
    p.add_argument("--method", choices=["full", *sorted(METHODS)], default=_D["method"],
                   help="full: train every weight; otherwise a delta-tuning method: MODEL stays frozen, the method's "
                        "parameters and the new task head train, and OUT/best/adapter/ holds the method in PEFT's "
                        "layout (lora and ia3, prefix and prompt load in peft). Its options: --METHOD.KEY VALUE, "
                        "listed below (e.g. --lora.rank 16 --lora.targets '[q, k, v]')")
    p.add_argument("--teacher", default=None,
                   help="knowledge distillation: MODEL (the student) learns to imitate this model directory, fine-tuned "
                        "on the same task with the same tokenizer; never trained nor saved (needs --distill)")
    p.add_argument("--distill", choices=sorted(DISTILLERS), default=None,
                   help="the distillation method: distilbert (soft targets + labels + hidden cosine), pkd (patient "
                        "[CLS] states), tinybert (embeddings, attention, hidden states; --tinybert.stage), minilm "
                        "(last-layer attention and value relations, across widths); options --METHOD.KEY VALUE")
    p.add_argument("--student-layers", type=int, default=None,
                   help="the student keeps this many of MODEL's layers, evenly spaced and ending with the last "
                        "(DistilBERT: give the teacher as MODEL and --teacher, and half its layers)")
    p.add_argument("--compress", choices=list(TRAINING_COMPRESSION), default=None,
                   help="compress while fine-tuning: prune on a cubic schedule (gradual-magnitude, Zhu & Gupta; "
                        "movement / soft-movement, Sanh et al.) or train with fake quantisation (qat-int8, Q8BERT; "
                        "ternary, TernaryBERT: add --teacher/--distill as the paper does); OUT/best/ holds the pruned "
                        "or integer model. Options --METHOD.KEY VALUE, e.g. "
                        "--gradual-magnitude.schedule '{final: 0.6, end: 300, every: 30}'")
    p.add_argument("--template", default=None,
                   help="prompt-based fine-tuning (PET, LM-BFF): wrap each input in this template, with {text_a}, "
                        "{text_b} and one slot {mask} (e.g. '{text_a} It was {mask}.'; for a causal LM the slot "
                        "ends it), and classify by MODEL's own LM head's scores of the --verbalizer words there. "
                        "MODEL needs its masked-lm or causal-lm head; no new head is added")
    p.add_argument("--verbalizer", nargs="+", default=None,
                   help="with --template: one label word per class, in label order (e.g. terrible great); each one "
                        "token of MODEL's tokenizer")
    p.add_argument("--shots-per-class", type=int, default=None,
                   help="few-shot: train on K examples of each class, drawn with --seed (LM-BFF uses 16 and 5 seeds)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the split files; unset: <data root>/glue/<TASK> or <data root>/ner/conll2003")
    p.add_argument("--train-split", default=_D["train_split"], help="training split (file name without extension)")
    p.add_argument("--eval-split", default=_D["eval_split"], help="labelled split that selects the best model")
    p.add_argument("--test-split", default=None, help="split scored with the best model at the end")
    p.add_argument("--text-fields", nargs="+", default=None,
                   help="task=table: one or two text columns; unset: text")
    p.add_argument("--label-field", default=None, help="task=table: the label column; unset: label")
    p.add_argument("--columns", nargs="+", default=None,
                   help="task=table, header-less CSV/TSV: the column names in order (e.g. --columns label text)")
    p.add_argument("--data-file", default=None,
                   help="task=table: one file holding every split (relative to --data-dir when given); "
                        "needs --split-column")
    p.add_argument("--split-column", default=None,
                   help="task=table with --data-file: the column naming each row's split; --train-split, "
                        "--eval-split and --test-split choose rows by its value")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip (and count, with one warning) rows that cannot be read instead of stopping at the first")
    p.add_argument("--regression", action="store_true", default=None,
                   help="task=table: labels are float scores (MSE loss, Pearson/Spearman)")
    p.add_argument("--max-length", type=int, default=_D["max_length"], help="tokens per example, specials included")
    p.add_argument("--overlong", choices=["truncate", "error"], default=_D["overlong"],
                   help="longer examples: truncate them (with one warning giving the count) or stop with an error")
    p.add_argument("--batch-size", type=int, default=_D["batch_size"], help="training examples per step")
    p.add_argument("--eval-batch-size", type=int, default=_D["eval_batch_size"], help="examples per eval batch")
    p.add_argument("--epochs", type=float, default=_D["epochs"], help="passes over the training data (may be fractional)")
    p.add_argument("--max-steps", type=_positive_or_none, default=None,
                   help="cap on optimizer steps (a positive number; unset or none = no cap)")
    p.add_argument("--grad-accum", type=int, default=_D["grad_accum"],
                   help="micro-batches of --batch-size per optimizer step (effective batch = both multiplied)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=_D["optimizer"],
                   help="optimizer (AdamW; LAMB for large batches), with no weight decay on biases and norms")
    p.add_argument("--max-train-examples", type=_positive_or_none, default=None,
                   help="train on a random subset of this size (fixed by --seed)")
    p.add_argument("--max-eval-examples", type=_positive_or_none, default=None,
                   help="evaluate on a random subset of this size (fixed by --seed)")
    p.add_argument("--lr", type=float, default=_D["lr"], help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=_D["weight_decay"],
                   help="AdamW weight decay (not on biases and norms)")
    p.add_argument("--layer-decay", type=float, default=_D["layer_decay"],
                   help="layer-wise lr decay: block i of L trains at lr * decay^(L - i), embeddings at "
                        "decay^(L + 1), the head at lr (ELECTRA uses 0.8; 1 = off)")
    p.add_argument("--warmup-ratio", type=float, default=_D["warmup_ratio"], help="fraction of steps with linear warm-up")
    p.add_argument("--decay", choices=["linear", "cosine", "constant"], default=_D["decay"],
                   help="learning-rate decay after warm-up")
    p.add_argument("--grad-clip", type=float, default=_D["grad_clip"], help="max global gradient norm (0 = off)")
    add_precision_option(p, default=_D["precision"], extra="weights stay fp32, but see --frozen-dtype")
    p.add_argument("--frozen-dtype", choices=["fp32", "bf16"], default=_D["frozen_dtype"],
                   help="with a delta method and --precision bf16: hold the frozen weights in bf16 (half their "
                        "memory; the method's parameters and the head stay fp32; OUT/best/ keeps them in bf16)")
    p.add_argument("--device", default=_D["device"], help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=_D["seed"], help="seed for the head, dropout, subsets and batch order")
    p.add_argument("--eval-every", type=int, default=_D["eval_every"], help="steps between evaluations (0 = each epoch)")
    p.add_argument("--log-every", type=int, default=_D["log_every"], help="steps between train-loss records")
    p.add_argument("--bucket-batches", type=int, default=_D["bucket_batches"],
                   help="length bucketing: sort by length inside random chunks of this many batches (0 = off)")
    p.add_argument("--checkpoint-every", type=int, default=_D["checkpoint_every"],
                   help="steps between training checkpoints in OUT/checkpoints (0 = at each evaluation)")
    p.add_argument("--keep-last", type=int, default=_D["keep_last"], help="training checkpoints kept on disk")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last checkpoint (same options), bit for bit")
    p.add_argument("--data-parallel", choices=["ddp", "fsdp"], default=_D["data_parallel"],
                   help="under torchrun (torchrun --nproc-per-node N -m ptmkit.cli finetune ...): each rank trains its "
                        "share of every batch; ddp replicates the model, fsdp shards it (FSDP2, ZeRO-3)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run, accepts_overrides=True)


def _methods_help() -> str:
    lines = ["delta-tuning methods (--method NAME) and their options (--NAME.KEY VALUE):"]
    for name, m in sorted(METHODS.items()):
        lines.append(f"\n{name} ({m.citation}{', mergeable' if m.mergeable else ''}):")
        lines.extend(describe(m.config, prefix=f"{name}."))
    return "\n".join(lines)


def config_from_args(args) -> FinetuneConfig:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}  # --resume is an argument of finetune()
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["show_progress"] = not args.no_progress
    options: dict = {}
    values["distill_options"] = {}
    values["compress_options"] = {}
    for key, value in parse_dotted(getattr(args, "overrides", []) or []).items():
        section, _, name = key.partition(".")
        if section == args.distill and name:  # --tinybert.stage prediction
            values["distill_options"][name] = value
            continue
        if section == args.compress and name:  # --gradual-magnitude.schedule '{final: 0.6, end: 300}'
            values["compress_options"][name] = value
            continue
        if section != args.method or not name:
            hint = (f"--method {section} " if section in METHODS else "") + f"--{section}.KEY"
            raise ConfigError(f"option --{key} is not an option of --method {args.method}; method options are "
                              f"--{args.method}.KEY (the method's settings, see --help)" +
                              (f"; for {section} use {hint}" if section in METHODS else ""))
        options[name] = value
    values["method_options"] = options
    return from_dict(FinetuneConfig, values)


def run(args) -> int:
    from ptmkit.recipes.finetune import finetune

    res = finetune(config_from_args(args), resume=args.resume)
    if res.get("interrupted"):
        print(f"interrupted at step {res['steps']}; continue with the same command and --resume")
        return 130
    if "rank" in res:  # torchrun: rank 0 reports for everyone
        return 0
    dev = ", ".join(f"{k} {v:.4f}" for k, v in (res["dev"] or {}).items() if v is not None)
    print(f"best {res['eval_split']} ({res['main_metric']}) at step {res['best_step']}: {dev}")
    if "majority_baseline_accuracy" in res:
        print(f"majority-class baseline accuracy: {res['majority_baseline_accuracy']:.4f}")
    if "test" in res:
        test = ", ".join(f"{k} {v:.4f}" for k, v in res["test"].items()) or "predictions only (unlabelled)"
        print(f"{res['test_split']}: {test}")
    n = res["parameters"]
    print(f"trainable parameters: {n['trainable']:,} of {n['total']:,} ({n['trainable_pct']:.2f}%, "
          f"method {res['method']})")
    print(f"train {res['train_time_s']:.1f} s, {res['examples_per_s']:.1f} examples/s, "
          f"{res['tokens_per_s']:.0f} tokens/s; wrote {args.out}/ (best/, results.json, metrics.jsonl, loss.png)")
    print(json.dumps({"dev": res["dev"], "best_step": res["best_step"]}))
    return 0
