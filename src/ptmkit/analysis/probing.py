"""Representation probing (survey §7.1, "representation probing"): a linear (or one-hidden-layer MLP) classifier on
the frozen vectors of each layer predicts a word's label (UD part of speech, dependency relation, CoNLL entity tag),
with Hewitt & Liang's control task (2019, "Designing and Interpreting Probes with Control Tasks": every word type gets
a fixed random label drawn from the task's label distribution) and selectivity = task accuracy - control accuracy.

Features are each word's first sub-token vector at every layer (embeddings output, then each block), extracted once
per split and cached as .npy files; the probes of every layer (task and control) train together as one batched
model (AdamW on mini-batches of the cached matrix).

Dimension legend: N words, D width, C labels, L layers (+1 for the embeddings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.data.encode import encode_words, prepare_backend


@torch.no_grad()
def word_features(model, tokenizer, sentences: list[list[str]], max_length: int = 128, batch_size: int = 32,
                  cache: str | Path | None = None) -> np.ndarray:
    """(L + 1, N, D) float16: every layer's vector of the first sub-token of each word of `sentences` (words cut by
    truncation are left out: see `kept`). With `cache` (a folder), reused when model, tokenizer and words match."""
    key = _cache_key(model, tokenizer, sentences, max_length)
    if cache is not None and (Path(cache) / f"{key}.npy").is_file():
        return np.load(Path(cache) / f"{key}.npy")
    enc = encode_words(prepare_backend(tokenizer), sentences, None, max_length, "truncate", "probing")
    device = next(model.parameters()).device
    backbone = getattr(model, "backbone", model)
    backbone.eval()
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    # batches of similar length: a treebank's sentences run from 1 to 100+ tokens, and padding every batch to its
    # longest random member cost about half the forward passes; each word is written to its sentence-order row
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    counts = np.array([len(enc.word_pos[i]) for i in range(len(enc))], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # each sentence's first word
    # every batch's words are written straight to their sentence-order rows of one array allocated at the first
    # batch (a memory-mapped .npy file when caching): a 30-layer model's features of a treebank are gigabytes, and
    # gathering the batches first and reordering them after held three copies at once (SmolLM2: 22 GB)
    feats, partial = None, Path(cache) / f"{key}.partial.npy" if cache is not None else None
    for start in range(0, len(enc), batch_size):
        idx = order[start:start + batch_size]
        t = max(len(enc.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc.input_ids[i])] = torch.from_numpy(enc.input_ids[i].astype(np.int64))
            mask[r, :len(enc.input_ids[i])] = 1
        hidden = backbone(ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        h = torch.stack(hidden)  # (L+1, B, T, D)
        if feats is None:
            shape = (h.shape[0], int(counts.sum()), h.shape[-1])
            if partial is not None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                feats = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
            else:
                feats = np.empty(shape, dtype=np.float16)
        rows = torch.cat([torch.full((len(enc.word_pos[i]),), r) for r, i in enumerate(idx)])
        cols = torch.cat([torch.from_numpy(enc.word_pos[i]) for i in idx])
        where = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in idx])  # sentence-order rows
        feats[:, where] = h[:, rows, cols].half().cpu().numpy()  # (L+1, words, D)
    if feats is None:  # no sentence at all
        raise ConfigError("probing: no sentences to extract features from")
    if partial is not None:
        feats.flush()
        del feats
        partial.replace(Path(cache) / f"{key}.npy")  # whole or absent: an interrupted extraction is never reused
        return np.load(Path(cache) / f"{key}.npy")
    return feats


def kept(tokenizer, sentences: list[list[str]], max_length: int = 128) -> list[np.ndarray]:
    """Per sentence, the indices of the words that have a vector (not cut by truncation, not token-less)."""
    return encode_words(prepare_backend(tokenizer), sentences, None, max_length, "truncate", "probing").word_index


def _cache_key(model, tokenizer, sentences, max_length) -> str:
    h = hashlib.sha256()
    h.update(tokenizer.backend.to_str().encode())
    h.update(json.dumps([max_length, sentences]).encode())
    for p in list(model.parameters())[:4] + list(model.parameters())[-2:]:  # the weights identify the model
        h.update(p.detach().float().cpu().numpy().tobytes()[:65536])
    return h.hexdigest()[:24]


def control_labels(words: list[str], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: each word type (lower-cased) gets one label drawn once from the empirical label
    distribution; every occurrence of the type carries it."""
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    types = sorted({w.lower() for w in words})
    drawn = dict(zip(types, rng.choice(values, size=len(types), p=counts / counts.sum())))
    return np.array([drawn[w.lower()] for w in words], dtype=np.int64)


@dataclass
class ProbeConfig:
    kind: str = "linear"  # linear | mlp (one hidden layer of `hidden` units, ReLU)
    hidden: int = 256
    epochs: int = 10  # passes over the cached features, in mini-batches
    batch_size: int = 1024
    min_steps: int = 300  # at least this many updates (a small probing set gets more passes)
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ConfigError(f"probe: kind must be 'linear' or 'mlp', got {self.kind!r}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError(f"probe: epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, {self.batch_size}, "
                              f"{self.lr}")


def train_probes(feats: np.ndarray, labels: list[np.ndarray], num_labels: int, cfg: ProbeConfig) -> "ProbeStack":
    """One probe per layer × label set, fitted on features (L, N, D) and label sets [(N,), ...] with AdamW on
    shuffled mini-batches of standardised features (the scale differs a lot between layers: embeddings vs the last
    block). The probes are independent (disjoint weights, per-weight AdamW), so training them as one batched model is
    the same as training each alone on the same mini-batches, at the cost of one small batched product per step
    instead of L × K Python-level trainings; a control task is just a second label set over the same features."""
    if feats.ndim != 3:
        raise ConfigError(f"probing: features must be (layers, words, width), got shape {feats.shape}")
    layers, n, d = feats.shape
    ys = torch.stack([torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in labels])  # (K, N)
    if ys.shape[1] != n:
        raise ConfigError(f"probing: {ys.shape[1]} labels for {n} feature vectors")
    x = torch.from_numpy(np.ascontiguousarray(feats))  # stays float16 when cached so: batches are cast per step
    mean = torch.stack([x[i].float().mean(0) for i in range(layers)])  # (L, D), one layer in float32 at a time
    std = torch.stack([x[i].float().std(0) for i in range(layers)]).clamp_min(1e-6)
    g = torch.Generator().manual_seed(cfg.seed)
    stack = ProbeStack(layers, len(labels), d, num_labels, cfg, mean, std, g)
    opt = torch.optim.AdamW(stack.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = -(-n // cfg.batch_size)
    steps = max(cfg.min_steps, cfg.epochs * per_epoch)
    order = torch.randperm(n, generator=g)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step:
            order = torch.randperm(n, generator=g)
        idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        logits = stack(x[:, idx].float())  # (L, K, B, C)
        target = ys[:, idx].expand(layers, -1, -1)  # (L, K, B)
        # the sum over probes of each probe's mean loss: every probe gets exactly its own gradient
        loss = F.cross_entropy(logits.reshape(-1, num_labels), target.reshape(-1), reduction="sum") / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return stack.eval()


class ProbeStack(nn.Module):
    """L × K probes (layers × label sets) as batched weights; probe (l, k) reads layer l and predicts label set k.
    Each probe is initialised as nn.Linear is (uniform in ±1/sqrt(fan_in))."""

    def __init__(self, layers: int, sets: int, d: int, num_labels: int, cfg: ProbeConfig, mean: torch.Tensor,
                 std: torch.Tensor, g: torch.Generator):
        super().__init__()
        dims = [d, num_labels] if cfg.kind == "linear" else [d, cfg.hidden, num_labels]

        def uniform(*shape, fan_in):
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) / fan_in ** 0.5)

        self.weights = nn.ParameterList(uniform(layers, sets, a, b, fan_in=a) for a, b in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(uniform(layers, sets, 1, b, fan_in=a) for a, b in zip(dims, dims[1:]))
        self.register_buffer("mean", mean[:, None, None])  # (L, 1, 1, D)
        self.register_buffer("std", std[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(L, B, D) -> logits (L, K, B, C)."""
        h = (x[:, None] - self.mean) / self.std  # (L, 1, B, D)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.matmul(h, w) + b  # (L, K, B, out)
            if i < len(self.weights) - 1:
                h = F.relu(h)
        return h

    @torch.no_grad()
    def accuracy(self, feats: np.ndarray, labels: list[np.ndarray], batch_size: int = 8192) -> np.ndarray:
        """(L, K) accuracy of every probe on features (L, N, D) and label sets [(N,), ...]."""
        x = torch.from_numpy(np.ascontiguousarray(feats))
        ys = torch.stack([torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in labels])  # (K, N)
        right = torch.zeros(x.shape[0], len(labels))
        for s in range(0, x.shape[1], batch_size):
            pred = self(x[:, s:s + batch_size].float()).argmax(-1)  # (L, K, B)
            right += (pred == ys[None, :, s:s + batch_size]).sum(-1)
        return (right / max(x.shape[1], 1)).numpy()


class _Single(nn.Module):
    """One probe of a stack, as a module on (N, D) features."""

    def __init__(self, stack: ProbeStack):
        super().__init__()
        self.stack = stack

    def forward(self, x):
        return self.stack(x[None])[0, 0]


def train_probe(x: np.ndarray, y: np.ndarray, num_labels: int, cfg: ProbeConfig) -> nn.Module:
    """A single probe on features (N, D) and labels (N,): a module mapping (N, D) to logits (N, C)."""
    return _Single(train_probes(np.asarray(x)[None], [y], num_labels, cfg)).eval()


@torch.no_grad()
def probe_accuracy(probe: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    pred = probe(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(-1).numpy()
    return float((pred == np.asarray(y)).mean())


def layer_curve(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray, test_y: np.ndarray,
                num_labels: int, cfg: ProbeConfig, control_train: np.ndarray | None = None,
                control_test: np.ndarray | None = None,
                transfer: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict[str, float]]:
    """Probe accuracy per layer (features (L+1, N, D)); with control labels also the control accuracy and the
    selectivity (task - control); with `transfer` (features, labels of another test set, e.g. another language) the
    same task probes' accuracy there. All probes (every layer, task and control) train together (train_probes)."""
    if train_feats.shape[0] != test_feats.shape[0]:
        raise ConfigError("probing: train and test features come from models with different depths")
    control = control_train is not None
    stack = train_probes(train_feats, [train_y, control_train] if control else [train_y], num_labels, cfg)
    acc = stack.accuracy(test_feats, [test_y, control_test] if control else [test_y])  # (L, K)
    out = []
    for layer in range(train_feats.shape[0]):
        row = {"layer": layer, "accuracy": float(acc[layer, 0])}
        if control:
            row["control_accuracy"] = float(acc[layer, 1])
            row["selectivity"] = row["accuracy"] - row["control_accuracy"]
        out.append(row)
    if transfer is not None:
        t_acc = stack.accuracy(transfer[0], [transfer[1]] * (2 if control else 1))
        for layer, row in enumerate(out):
            row["transfer_accuracy"] = float(t_acc[layer, 0])
    return out
