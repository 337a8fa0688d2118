"""Representation probing (survey §7.1, "representation probing"): a linear (or one-hidden-layer MLP) classifier on
the frozen vectors of each layer predicts a word's label (UD part of speech, dependency relation, CoNLL entity tag),
with Hewitt & Liang's control task (2019, "Designing and Interpreting Probes with Control Tasks": every word type gets
a fixed random label drawn from the task's label distribution) and selectivity = task accuracy - control accuracy.

Features are each word's first sub-token vector at every layer (embeddings output, then each block), extracted once
per split and cached as .npy files; probes train on them in seconds (AdamW on mini-batches of the cached matrix).

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
    chunks: list[np.ndarray] = []
    for start in range(0, len(enc), batch_size):
        idx = range(start, min(start + batch_size, len(enc)))
        t = max(len(enc.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc.input_ids[i])] = torch.from_numpy(enc.input_ids[i].astype(np.int64))
            mask[r, :len(enc.input_ids[i])] = 1
        hidden = backbone(ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        h = torch.stack(hidden)  # (L+1, B, T, D)
        rows = torch.cat([torch.full((len(enc.word_pos[i]),), r) for r, i in enumerate(idx)])
        cols = torch.cat([torch.from_numpy(enc.word_pos[i]) for i in idx])
        chunks.append(h[:, rows, cols].half().cpu().numpy())  # (L+1, words, D)
    feats = np.concatenate(chunks, axis=1)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.save(Path(cache) / f"{key}.npy", feats)
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


def train_probe(x: np.ndarray, y: np.ndarray, num_labels: int, cfg: ProbeConfig) -> nn.Module:
    """A probe fitted on features (N, D) and labels (N,) with AdamW on shuffled mini-batches, on standardised features
    (the scale differs a lot between layers: embeddings vs the last block)."""
    torch.manual_seed(cfg.seed)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    d = xt.shape[1]
    body = nn.Linear(d, num_labels) if cfg.kind == "linear" else nn.Sequential(
        nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, num_labels))
    probe = _Standardised(body, mean, std)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(yt)
    per_epoch = -(-n // cfg.batch_size)
    steps = max(cfg.min_steps, cfg.epochs * per_epoch)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=g)
    for step in range(steps):
        k = step % per_epoch
        if k == 0 and step:
            order = torch.randperm(n, generator=g)
        idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        loss = F.cross_entropy(probe(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


class _Standardised(nn.Module):
    def __init__(self, body: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.body = body
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


@torch.no_grad()
def probe_accuracy(probe: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    pred = probe(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(-1).numpy()
    return float((pred == np.asarray(y)).mean())


def layer_curve(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray, test_y: np.ndarray,
                num_labels: int, cfg: ProbeConfig, control_train: np.ndarray | None = None,
                control_test: np.ndarray | None = None) -> list[dict[str, float]]:
    """Probe accuracy per layer (features (L+1, N, D)); with control labels also the control accuracy and the
    selectivity (task - control)."""
    if train_feats.shape[0] != test_feats.shape[0]:
        raise ConfigError("probing: train and test features come from models with different depths")
    out = []
    for layer in range(train_feats.shape[0]):
        probe = train_probe(train_feats[layer], train_y, num_labels, cfg)
        row = {"layer": layer, "accuracy": probe_accuracy(probe, test_feats[layer], test_y)}
        if control_train is not None:
            ctl = train_probe(train_feats[layer], control_train, num_labels, cfg)
            row["control_accuracy"] = probe_accuracy(ctl, test_feats[layer], control_test)
            row["selectivity"] = row["accuracy"] - row["control_accuracy"]
        out.append(row)
    return out
