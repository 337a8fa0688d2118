"""Evaluation of a model on task data: predictions and scores on an encoded split (used while fine-tuning to pick
the best model) and `evaluate()`, which scores a saved model directory on any split and writes metrics.json +
predictions.tsv; an unlabelled split (GLUE test files) gets predictions only."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit import adapt, atomic
from ptmkit.adapt.prompt_model import PromptClassifier, prompt_examples
from ptmkit.adapt.prompts import Template
from ptmkit.analysis.metrics import compute_metrics, entity_scores
from ptmkit.config import ConfigError
from ptmkit.data.encode import Encoded, collate, prepare_backend, sorted_batches, word_predictions
from ptmkit.data.glue import GLUE_TASKS
from ptmkit.data.task_data import TaskSpec, _labelled, _subset, _take, canonical_task, encode_split, load_split
from ptmkit.data.tokenizer import Tokenizer, check_vocab
from ptmkit.models import load_model
from ptmkit.objectives.classification import task_logits, task_loss
from ptmkit.train.logging import progress
from ptmkit.train.precision import Precision

TASK_FILE = "finetune_task.json"  # written into a fine-tuned model directory: how evaluate() reads data for it


def kind_of(spec: TaskSpec) -> str:
    return "token" if spec.is_token else "regression" if spec.is_regression else "classification"


def _pad_id(tok: Tokenizer) -> int:
    for i in (tok.pad_id, tok.eos_id):
        if i is not None:
            return i
    return 0  # no pad token (GPT-2): any id works, the attention mask hides it


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}); use auto, cpu or cuda[:N]") from None


@torch.no_grad()
def predict(model, enc: Encoded, spec: TaskSpec, batch_size: int, precision: Precision,
            device: torch.device, pad_id: int, show_progress: bool = False):
    """(outputs in the split's order, mean loss or None). Outputs: (N, C) logits / (N,) scores for
    sequence tasks; for token tasks N arrays of per-token predicted tag ids."""
    was_training = model.training
    model.eval()
    batches = sorted_batches(enc.lengths, batch_size)
    seq_out: np.ndarray | None = None
    tok_out: list[np.ndarray | None] = [None] * len(enc) if spec.is_token else []
    loss_sum, loss_n = 0.0, 0
    bar = progress(len(batches), desc="evaluate", enabled=show_progress)
    for idx in batches:
        batch = {k: v.to(device) for k, v in collate(enc, idx, pad_id).items()}
        with precision.autocast():
            logits = task_logits(model, batch)
        logits = logits.float()
        if "labels" in batch:
            n = int((batch["labels"] != -100).sum()) if spec.is_token else len(idx)
            loss_sum += float(task_loss(logits, batch["labels"], kind_of(spec))) * n
            loss_n += n
        if spec.is_token:
            pred = logits.argmax(-1).cpu().numpy()  # (B, T)
            for r, i in enumerate(idx.tolist()):
                tok_out[i] = pred[r, : enc.lengths[i]]
        else:
            vals = logits.cpu().numpy()  # (B, C)
            if seq_out is None:
                seq_out = np.zeros((len(enc), vals.shape[1]), dtype=np.float32)
            seq_out[idx] = vals
        bar.update(1)
    bar.close()
    model.train(was_training)
    out = tok_out if spec.is_token else (seq_out[:, 0] if spec.is_regression else seq_out)
    return out, (loss_sum / loss_n if loss_n else None)


def score(spec: TaskSpec, enc: Encoded, data, outputs) -> tuple[Any, dict[str, float], dict | None]:
    """(predictions, metrics, per-entity-type breakdown or None). Predictions: class ids, scores,
    or one tag id per word (NER metrics are entity-level, on the words)."""
    if spec.is_token:
        preds = word_predictions(enc, outputs, fill=data.tag_names.index("O") if "O" in data.tag_names else 0)
        s = entity_scores(preds, data.tags, scheme="iob2", tag_names=data.tag_names)
        names = {"entity_f1": "f1", "entity_precision": "precision", "entity_recall": "recall"}
        return preds, {m: s[names[m]] for m in spec.metrics}, s["per_type"]
    preds = outputs if spec.is_regression else outputs.argmax(-1)
    if not data.has_labels:
        return preds, {}, None
    gold = np.array([e.label for e in data.examples])
    return preds, compute_metrics(spec.metrics, preds, gold), None


def _class_map(model_names: list[str], data_names: list[str], model_dir: Path, task: str) -> np.ndarray | None:
    """data label id → model class id (by name); None when they are the same list."""
    if model_names == data_names:
        return None
    if task in GLUE_TASKS and model_names == [str(v) for v in GLUE_TASKS[task].label_values]:
        return None  # fine-tuned before GLUE labels had names: the files' own values, in the task's order
    if set(data_names) <= set(model_names):
        return np.array([model_names.index(n) for n in data_names])
    if all(n == f"LABEL_{i}" for i, n in enumerate(model_names)) and len(model_names) == len(data_names):
        return None  # a head saved without names: assume the task's order
    raise ValueError(f"{model_dir}: the model's labels {model_names} do not cover the data's labels "
                     f"{data_names}; evaluate a model fine-tuned on this task")


ADAPTER_DIR = "adapter"  # a fine-tuned model directory's delta-tuning method, beside its frozen weights


def load_adapted(model_dir: str | Path, **kwargs):
    """load_model, then the directory's adapter (ptm finetune --method ...) when it has one; a quantised directory
    (ptm compress, its config.json's quantization_config) loads with its integer weights."""
    config = json.loads((Path(model_dir) / "config.json").read_text()) if (Path(model_dir) / "config.json").is_file() \
        else {}
    if (config.get("quantization_config") or {}).get("quant_method") == "ptmkit":
        from ptmkit.compress.quant import load_quantized  # torchao is imported only for quantised models

        return load_quantized(model_dir)
    model = load_model(model_dir, **kwargs)
    if (Path(model_dir) / ADAPTER_DIR).is_dir():
        adapt.load_adapter(model, Path(model_dir) / ADAPTER_DIR)
    return model


def evaluate(
    model_dir: str | os.PathLike,
    task: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "dev",
    out: str | os.PathLike | None = None,
    *,
    max_length: int | None = None,
    overlong: str = "truncate",
    batch_size: int = 128,
    precision: str = "auto",
    device: str = "auto",
    text_fields: list[str] | None = None,
    label_field: str | None = None,
    regression: bool | None = None,
    columns: list[str] | None = None,
    split_column: str | None = None,
    data_file: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
    max_examples: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Score a fine-tuned model directory on one split; write out/metrics.json and out/predictions.tsv.

    ``task``, ``max_length`` and the table options default to what the fine-tuning run recorded in
    the model directory (finetune_task.json), else max_length=128; ``max_examples`` scores a seeded subset. An
    unlabelled split (GLUE test files) gets predictions only. Returns the metrics.json contents.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no config.json")
    info = json.loads((model_dir / TASK_FILE).read_text()) if (model_dir / TASK_FILE).is_file() else {}
    task = task or info.get("task")
    if task is None:
        raise ConfigError(f"{model_dir} does not record its task ({TASK_FILE} missing); pass task=...")
    task = canonical_task(task)
    if task == "table":
        text_fields = text_fields or info.get("text_fields") or ["text"]
        label_field = label_field or info.get("label_field") or "label"
        regression = bool(info.get("regression", False) if regression is None else regression)
        columns = columns or info.get("columns")
        split_column = split_column or info.get("split_column")
        data_file = data_file or info.get("data_file")
    spec = TaskSpec(task, data_dir, text_fields, label_field, bool(regression), columns=columns,
                    split_column=split_column, data_file=data_file, skip_bad_rows=skip_bad_rows)
    max_length = max_length or info.get("max_length") or 128
    dev_ = _device(device)
    t0 = time.perf_counter()

    model = load_adapted(model_dir)
    tok = Tokenizer.load(model_dir)
    prompt = info.get("template") is not None  # prompt-based fine-tuning: the LM scores the label words
    if prompt:
        template = Template(info["template"])
        model = PromptClassifier.from_template(model, template, info["verbalizer"], tok, info["label_names"])
        model.label_names = info["label_names"]
    want = "token-classification" if spec.is_token else "sequence-classification"
    if getattr(model, "task", "base") != want:
        raise ValueError(f"{model_dir} is a {getattr(model, 'task', 'base')} model; task {task!r} needs "
                         f"a {want} model (fine-tune one with `ptm finetune`)")
    if spec.is_regression != (model.num_labels == 1):
        raise ValueError(f"{model_dir} has {model.num_labels} outputs but task {task!r} is "
                         f"{'regression (1 output)' if spec.is_regression else 'classification'}")
    model_names = getattr(model, "label_names", None) or [f"LABEL_{i}" for i in range(model.num_labels)]
    model.to(dev_)

    data, path = load_split(spec, split, label_names=model_names if spec.is_token else None,
                            allow_unlabelled=True)
    data = _take(data, _subset(len(data), max_examples, 1))  # a seeded subset (fine-tuning's eval subset for seed 0)
    check_vocab(tok, model.config.vocab_size)
    if prompt:
        data = prompt_examples(data, template, tok, max_length, model.causal)
    enc = encode_split(spec, prepare_backend(tok), data, max_length, overlong, path)
    if len(enc) == 0:
        raise ValueError(f"{path}: no examples to evaluate")
    if not spec.is_token and not spec.is_regression and enc.labels is not None:
        cmap = _class_map(model_names, data.label_names, model_dir, spec.task)
        if cmap is not None:  # gold ids into the model's class order
            enc.labels = cmap[enc.labels]
            data = dataclasses.replace(data, examples=[dataclasses.replace(e, label=int(cmap[e.label]))
                                                       for e in data.examples], label_names=model_names)
    prec = Precision(precision, dev_)
    outputs, loss = predict(model, enc, spec, batch_size, prec, dev_, _pad_id(tok), show_progress)
    labelled = _labelled(data)
    preds, metrics, per_type = score(spec, enc, data, outputs)
    seconds = time.perf_counter() - t0

    result: dict[str, Any] = {
        "task": spec.task, "split": split, "file": str(path), "model": str(model_dir), "examples": len(enc),
        "labelled": labelled, "metrics": metrics, "truncated": enc.truncated, "max_length": max_length,
        "seconds": round(seconds, 2),
    }
    if labelled:
        result["loss"] = loss
    if per_type is not None:
        result["per_type"] = per_type
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        _write_predictions(out / "predictions.tsv", spec, data, preds, model_names, labelled)
    return result


def _write_predictions(path: Path, spec: TaskSpec, data, preds, names: list[str], labelled: bool) -> None:
    """index<TAB>prediction[<TAB>gold]: a class name, a score, or the space-joined tags of a sentence."""
    if spec.is_token:
        arr = np.asarray(names)
        pred_col = [" ".join(arr[p]) for p in preds]
        gold_col = [" ".join(arr[np.asarray(t, dtype=np.int64)]) for t in data.tags]
    elif spec.is_regression:
        pred_col = [f"{v:.4f}" for v in np.asarray(preds).tolist()]
        gold_col = [f"{e.label:.4f}" if e.label is not None else "" for e in data.examples]
    else:
        arr = np.asarray(names)
        pred_col = arr[np.asarray(preds, dtype=np.int64)].tolist()
        gold_col = [names[e.label] if e.label is not None else "" for e in data.examples]
    lines = ["index\tprediction" + ("\tgold" if labelled else "")]
    for i, p in enumerate(pred_col):
        lines.append(f"{i}\t{p}" + (f"\t{gold_col[i]}" if labelled else ""))
    atomic.write_text(path, "\n".join(lines) + "\n")
