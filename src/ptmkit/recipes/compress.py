"""`ptm compress MODEL --method M`: one compression method applied to a model directory, the compressed model written
as a model directory beside a report of what it cost and what it kept.

The post-training methods (structured pruning of heads, neurons or layers; one-shot magnitude pruning; int8 / int4
quantisation, static with calibration, Q-BERT's Hessian-guided bits; cross-layer sharing) run here: MODEL is loaded,
the transform applied (with a few training batches of --task when the method measures importance, calibrates or
estimates Hessian traces), the result saved, and with --task both models are scored on its dev split. Distillation
trains a student and goes through the one training engine (`ptm finetune --teacher --distill`), started from here.

out/model/          the compressed model (a model directory; quantised ones record their format in config.json)
out/report.json     method and options, parameters, size on disk, sparsity or bit widths, dev scores and retention
out/metrics.jsonl   the dev scores before and after, one record each
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptmkit import atomic, outputs
from ptmkit.compress import share
from ptmkit.compress.distill import DISTILLERS
from ptmkit.compress.prune import STRUCTURED, reports
from ptmkit.compress.prune import unstructured
from ptmkit.config import ConfigError, from_dict
from ptmkit.data.encode import prepare_backend
from ptmkit.data.task_batches import TaskBatches
from ptmkit.data.task_data import TaskSpec, _subset, _take, canonical_task, encode_split, load_split
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import save_model
from ptmkit.objectives.classification import TaskConfig, TaskObjective
from ptmkit.recipes.evaluate import TASK_FILE, _pad_id, evaluate, kind_of, load_adapted
from ptmkit.recipes.finetune import TRAINING_COMPRESSION, FinetuneConfig, _compression_config, finetune
from ptmkit.train.logging import MetricsLogger

# The kinds: structured / unstructured pruning, quantisation and sharing run here; distillation and the methods that
# prune or quantise while training (gradual-magnitude, movement, soft-movement, qat-int8, ternary) are fine-tuning
# runs on the one engine (ptm finetune --teacher/--distill, --compress), started from here.
ONE_SHOT_UNSTRUCTURED = ("magnitude",)
ONE_SHOT_QUANT = ("int8-dynamic", "int8-weight", "int4-weight", "static-int8", "qbert")
KINDS: dict[str, str] = {
    **{name: "structured" for name in STRUCTURED}, **{name: "unstructured" for name in ONE_SHOT_UNSTRUCTURED},
    **{name: "quant" for name in ONE_SHOT_QUANT}, "share": "share", **{name: "distill" for name in DISTILLERS},
    **{name: "train" for name in TRAINING_COMPRESSION},  # pruned / quantised while fine-tuning on the task
}


def method_config(name: str) -> type:
    """The config class of method `name` (quantisers import torchao, so only when one is asked for)."""
    kind = KINDS[name]
    if kind == "train":
        return _compression_config(name)
    if kind == "quant":
        from ptmkit.compress.quant import QUANTIZERS

        return QUANTIZERS[name].config
    return {"structured": lambda: STRUCTURED[name].config, "unstructured": lambda: unstructured.UNSTRUCTURED[name].config,
            "share": lambda: share.ShareConfig, "distill": lambda: DISTILLERS[name][0]}[kind]()
MARKERS = ("model", "report.json", "metrics.jsonl")


@dataclass
class CompressConfig:
    model: str  # model directory; for --task, a fine-tuned one (its finetune_task.json names task and length)
    out: str  # run directory: model/, report.json, metrics.jsonl
    method: str = "int8-dynamic"  # a key of METHODS
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's config (--METHOD.key)
    task: str | None = None  # data for importance / calibration / distillation, and the dev scores; None: the
    # model directory's own task if it records one, else no data (methods that need none only)
    data_dir: str | None = None  # default: <data root>/glue/<TASK>
    max_length: int | None = None  # default: the model directory's, else 128
    batch_size: int = 32
    data_batches: int = 8  # training batches for importance, calibration and Hessian traces
    evaluate: bool = True  # score the model before and after on the dev split (needs a task)
    eval_precision: str = "fp32"  # the dev scores' precision (int8 kernels compute in their own)
    max_eval_examples: int | None = None  # score a seeded subset of the dev split (quick looks, tests)
    student_layers: int | None = None  # distillation: the student keeps this many of MODEL's layers
    epochs: float = 3.0  # distillation and compression while training: epochs
    lr: float = 1e-4  # distillation and compression while training: learning rate
    seed: int = 0
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in KINDS:
            raise ConfigError(f"compress: unknown method {self.method!r}; choose one of {sorted(KINDS)}")
        from_dict(method_config(self.method), dict(self.method_options), where=f"compress: {self.method} options")
        if self.data_batches < 1:
            raise ConfigError(f"compress: data_batches must be >= 1, got {self.data_batches}")
        if self.student_layers is not None and KINDS[self.method] != "distill":
            raise ConfigError("compress: student_layers makes a distillation student; it is not an option of "
                              f"{self.method}")


def _task_of(cfg: CompressConfig) -> tuple[str | None, dict[str, Any]]:
    info_path = Path(cfg.model) / TASK_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    task = cfg.task or info.get("task")
    return (canonical_task(task) if task else None), info


def _batches(cfg: CompressConfig, task: str, info: dict[str, Any], tok: Tokenizer) -> list[dict[str, torch.Tensor]]:
    """cfg.data_batches training batches of the task (seeded), for importance, calibration and Hessian traces."""
    spec = TaskSpec(task, cfg.data_dir)
    data, path = load_split(spec, "train")
    data = _take(data, _subset(len(data), cfg.data_batches * cfg.batch_size, cfg.seed))
    enc = encode_split(spec, prepare_backend(tok), data, cfg.max_length or info.get("max_length") or 128,
                       "truncate", path)
    it = iter(TaskBatches(enc, cfg.batch_size, _pad_id(tok), seed=cfg.seed))
    return [next(it) for _ in range(min(cfg.data_batches, -(-len(enc) // cfg.batch_size)))]


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def needs_batches(method: str, options: dict[str, Any]) -> bool:
    """Whether a post-training method measures the model on data (importance, calibration, Hessian traces)."""
    kind = KINDS[method]
    if kind == "structured":
        return STRUCTURED[method].needs_loss(from_dict(STRUCTURED[method].config, dict(options)))
    if kind == "quant":
        from ptmkit.compress.quant import QUANTIZERS

        return "batches" in QUANTIZERS[method].needs
    return False


def apply_method(model: torch.nn.Module, method: str, options: dict[str, Any], batches: list | None = None,
                 loss_fn=None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Apply a post-training method (KINDS: structured, unstructured, quant, share) to `model` in place; returns the
    model and what was reached (the pruning reports, the sparsity, the bit widths, the shared groups). `batches`
    (task batches with labels) and `loss_fn(model, batch) -> loss` serve the methods that measure on data."""
    kind = KINDS[method]
    details: dict[str, Any] = {}
    if kind == "structured":
        m = STRUCTURED[method]
        mcfg = from_dict(m.config, dict(options))
        model = m.apply(model, mcfg, loss_fn, batches) if m.needs_loss(mcfg) else m.apply(model, mcfg)
        details["pruning"] = [dataclasses.asdict(r) | {"fraction": r.fraction, "parameter_fraction":
                                                       r.parameter_fraction} for r in reports(model)]
    elif kind == "unstructured":
        unstructured.prune(model, method, dict(options))
        unstructured.finalize(model)
        rep = unstructured.report(model)
        details["sparsity"] = {"zeros": rep["zeros"], "size": rep["size"], "sparsity": rep["sparsity"]}
    elif kind == "quant":
        from ptmkit.compress.quant import QUANTIZERS, quantize
        from ptmkit.compress.quant import report as quant_report

        needs = QUANTIZERS[method].needs
        inputs = {}
        if "batches" in needs:  # calibration sees model inputs; the Hessian needs the labels of its loss
            inputs["batches"] = batches if "loss_fn" in needs else [_model_inputs(b) for b in batches]
        if "loss_fn" in needs:
            inputs["loss_fn"] = loss_fn
        model = quantize(model, method, dict(options), **inputs)
        rec = quant_report(model)
        details["quantisation"] = {"weight_bits": rec.weight_bits, "activation_bits": rec.activation_bits,
                                   "group_size": rec.group_size}
    elif kind == "share":
        share.apply(model, from_dict(share.ShareConfig, dict(options)))
        details["shared_groups"] = share.shared_groups(model)
    else:
        raise ConfigError(f"apply_method: {method} trains; run it with ptm finetune (or ptm compress)")
    return model, details


def compress(cfg: CompressConfig) -> dict[str, Any]:
    """Apply cfg.method to cfg.model; write and return the report."""
    kind = KINDS[cfg.method]
    task, info = _task_of(cfg)
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.model).resolve():
        raise ConfigError(f"compress: out {out} is the model's own directory; write the compressed model elsewhere")
    outputs.check_free(out, MARKERS, overwrite=cfg.overwrite, kind="compression run")
    if kind in ("distill", "train"):
        return _train(cfg, task, info)
    needs_data = needs_batches(cfg.method, cfg.method_options)
    if needs_data and task is None:
        raise ConfigError(f"compress: {cfg.method} measures the model on data; give --task (and --data-dir for your "
                          "own files), or use a fine-tuned model directory that records its task")
    t0 = time.perf_counter()
    model = load_adapted(cfg.model).eval()
    tok = Tokenizer.load(cfg.model)
    before = {"parameters": _parameters(model), "bytes": disk_bytes(cfg.model)}
    batches = _batches(cfg, task, info, tok) if needs_data else None
    objective = TaskObjective(TaskConfig(kind_of(TaskSpec(task, cfg.data_dir)))) if needs_data else None
    model, details = apply_method(model, cfg.method, cfg.method_options, batches,
                                  (lambda m, b: objective.loss(m, b)[0]) if objective else None)
    outputs.discard(out)
    out.mkdir(parents=True)
    with atomic.atomic_dir(out / "model") as tmp:
        if kind == "quant":
            from ptmkit.compress.quant import save_quantized

            save_quantized(model, tmp)
        else:
            save_model(model, tmp, tokenizer_from=cfg.model)
        for name in (TASK_FILE,):  # the task settings travel: ptm evaluate reads them
            if (Path(cfg.model) / name).is_file():
                shutil.copyfile(Path(cfg.model) / name, tmp / name)
        if kind == "quant":
            Tokenizer.load(cfg.model).save(tmp)
    after = {"parameters": _parameters(model), "bytes": disk_bytes(out / "model")}
    report: dict[str, Any] = {"method": cfg.method, "kind": kind, "options": cfg.method_options, "model": cfg.model,
                              "task": task, "before": before, "after": after, **details,
                              "compress_s": round(time.perf_counter() - t0, 2)}
    if cfg.evaluate and task is not None:
        report.update(_scores(cfg, task, out))
    atomic.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def disk_bytes(path: str | Path) -> int:
    """Bytes of the files of a model directory (what it costs to store and ship)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _scores(cfg: CompressConfig, task: str, out: Path) -> dict[str, Any]:
    """Dev scores of the model before and after, metrics.jsonl, and the retention (after / before) of each metric."""
    logger = MetricsLogger(out)
    scores = {}
    for which, path in (("before", Path(cfg.model)), ("after", out / "model")):
        res = evaluate(path, task, cfg.data_dir, "dev", max_length=cfg.max_length, precision=cfg.eval_precision,
                       device="cpu", max_examples=cfg.max_eval_examples, show_progress=cfg.show_progress)
        scores[which] = res["metrics"]
        logger.log({"split": "eval", "model": which, **res["metrics"]})
    logger.close()
    retention = {k: scores["after"][k] / scores["before"][k] for k in scores["after"]
                 if isinstance(scores["before"].get(k), float) and scores["before"][k] > 0}
    return {"dev": scores, "retention": retention}


def _train(cfg: CompressConfig, task: str | None, info: dict[str, Any]) -> dict[str, Any]:
    """Distillation and compression while training run on the engine as a fine-tuning run in out/, whose best/ is
    the compressed model: the student (MODEL is the teacher and, with student_layers, the student's start), or MODEL
    pruned on its schedule or trained with fake quantisation and converted to int8."""
    if task is None:
        raise ConfigError(f"compress: {cfg.method} trains on a task's training data; give --task")
    if KINDS[cfg.method] == "distill":
        how = dict(teacher=cfg.model, distill=cfg.method, distill_options=dict(cfg.method_options),
                   student_layers=cfg.student_layers)
    else:
        how = dict(compress=cfg.method, compress_options=dict(cfg.method_options))
    res = finetune(FinetuneConfig(model=cfg.model, task=task, out=cfg.out, data_dir=cfg.data_dir, **how,
                                  epochs=cfg.epochs, lr=cfg.lr, max_eval_examples=cfg.max_eval_examples,
                                  batch_size=cfg.batch_size, max_length=cfg.max_length or info.get("max_length") or 128, seed=cfg.seed,
                                  overwrite=cfg.overwrite, show_progress=cfg.show_progress))
    return {"method": cfg.method, "kind": KINDS[cfg.method], "student": str(Path(cfg.out) / "best"), **res}
