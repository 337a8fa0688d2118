"""Export a model directory to ONNX for deployment, checked against ONNX Runtime before it is handed over.

The graph is traced by torch.export (torch.onnx.export(dynamo=True), the exporter torch maintains) with dynamic batch
and length, so one file serves every input shape. int8: the fp32 graph quantised by ONNX Runtime's own dynamic
quantisation (int8 weights, activations quantised per batch at run time: the path ONNX Runtime recommends for
Transformers on CPU). Every export is run in ONNX Runtime on a check batch of other shapes than the trace's (with
padding) and compared with ptmkit's fp32 outputs; the differences are written in export.json, and an fp32 export
off by more than `atol` is an error, never a silent file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptmkit import atomic, outputs
from ptmkit.config import ConfigError
from ptmkit.models import load_model
from ptmkit.models.registry import backbone_of

MARKERS = ("model.onnx", "export.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
                   "vocab.json", "config.json")


class _Graph(nn.Module):
    """The model as ONNX sees it: named tensor inputs in, the logits (or the last hidden states) out."""

    def __init__(self, model: nn.Module, segments: bool):
        super().__init__()
        self.model, self.segments = model, segments

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"attention_mask": attention_mask}
        if self.segments:
            kw["token_type_ids"] = token_type_ids
        out = self.model(input_ids, **kw)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _takes_segments(model: nn.Module) -> bool:
    return getattr(backbone_of(model).config, "type_vocab_size", 0) > 1


def _inputs(vocab: int, batch: int, length: int, segments: bool, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # one padded row: the exported mask path must be the general one
    out = {"input_ids": ids, "attention_mask": mask}
    if segments:
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def _run_onnx(path: Path, inputs: dict[str, torch.Tensor], threads: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v.numpy() for k, v in inputs.items() if k in names})[0]


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool = False, atol: float = 1e-4, opset: int = 18,
                overwrite: bool = False) -> dict[str, Any]:
    """Write out/model.onnx (and out/model.int8.onnx with int8) from `model_dir`, with its tokenizer and config, and
    out/export.json: the check's differences, file sizes and versions. Returns export.json's contents."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter writes the graph with it)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); install them with "
                          "`pip install -e .[deploy]`") from e
    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"export-onnx: --out {out} is the model's own directory; export elsewhere")
    if not 7 <= opset:
        raise ConfigError(f"export-onnx: opset must be >= 7 (18 is torch's default), got {opset}")
    outputs.check_free(out, MARKERS, overwrite=overwrite, kind="ONNX export")
    model = load_model(model_dir).eval()
    segments = _takes_segments(model)
    vocab = backbone_of(model).vocab_size
    graph = _Graph(model, segments)
    trace = _inputs(vocab, 2, 16, segments, seed=0)
    check = _inputs(vocab, 3, 24, segments, seed=1)  # other shapes than the trace's: the axes must be dynamic
    dims = {name: {0: "batch", 1: "sequence"} for name in trace}
    outputs.discard(out)
    t0 = time.perf_counter()
    with atomic.atomic_dir(out) as tmp, torch.no_grad():
        torch.onnx.export(graph, (), str(tmp / "model.onnx"), kwargs=trace, dynamo=True, opset_version=opset,
                          input_names=list(trace), output_names=["output"], dynamic_shapes=dims,
                          external_data=False, verbose=False)
        reference = graph(**check).float().numpy()
        got = _run_onnx(tmp / "model.onnx", check, threads=torch.get_num_threads())
        diff = float(np.abs(got - reference).max())
        if not diff <= atol:
            raise RuntimeError(f"export-onnx: ONNX Runtime's output differs from ptmkit's by {diff:.3g} > atol {atol} "
                               "on the check batch; the export is not faithful (report it with the model's family)")
        report = {"model": str(model_dir), "family": backbone_of(model).family, "inputs": list(trace),
                  "opset": opset, "fp32": {"file": "model.onnx", "bytes": (tmp / "model.onnx").stat().st_size,
                                           "max_abs_diff": diff, "atol": atol}}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per output channel: one scale per row of each weight. Measured on MiniLM (benchmarks/int8_latency.py,
            # random tokens): relative error of the last hidden states 0.34 with per-tensor scales, 0.17 per channel
            # reduce_range (7-bit weights) where the CPU lacks VNNI: there ONNX Runtime's u8 x s8 kernels add pairs of
            # products in int16, which saturates with full-range weights (its quantization guide); measured on an
            # AVX2 EPYC on the tests' tiny BERT classifier: relative error 0.101 with full range, 0.0094 with it
            vnni = bool(torch.cpu._is_vnni_supported())
            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8,
                             per_channel=True, reduce_range=not vnni)
            q = _run_onnx(tmp / "model.int8.onnx", check, threads=torch.get_num_threads())
            report["int8"] = {"file": "model.int8.onnx", "bytes": (tmp / "model.int8.onnx").stat().st_size,
                              "method": "onnxruntime.quantization.quantize_dynamic (QInt8 weights, per channel"
                                        + (")" if vnni else ", 7-bit range: this CPU has no VNNI)"),
                              "max_abs_diff": float(np.abs(q - reference).max()),
                              "relative_error": float(np.linalg.norm(q - reference) / np.linalg.norm(reference)),
                              "argmax_agreement": float((q.argmax(-1) == reference.argmax(-1)).mean())}
        for name in TOKENIZER_FILES:  # the tokenizer and config travel with the graph
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        import onnx
        import onnxruntime

        report.update(torch=torch.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                      export_s=round(time.perf_counter() - t0, 2))
        atomic.write_text(tmp / "export.json", json.dumps(report, indent=2) + "\n")
    return report
