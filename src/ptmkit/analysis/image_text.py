"""Evaluating an image-text dual encoder (CLIP, Radford et al. 2021 §3): image<->text retrieval recall at k, zero-shot
classification with text prompts (§3.1.4: a class is the mean of its prompts' text vectors, "an emoji of {}"), and
the linear probe that reads the same image vectors (§3.2), each beside its chance level.

Recall@k: image -> text counts an image as found when any of its captions is among the k captions most similar to
it; text -> image counts a caption as found when its own image is among its k most similar images (the COCO
protocol of Karpathy & Fei-Fei 2015, used by CLIP Table 13).

Dimension legend: N images, M captions, C classes, P embedding width, K templates.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ptmkit.analysis.probing import ProbeConfig, probe_accuracy, train_probe
from ptmkit.data.images.dataset import padded, tokenize_captions

KS = (1, 5, 10)


@torch.no_grad()
def image_embeddings(model, dataset, batch_size: int = 256, device="cpu", autocast=None) -> torch.Tensor:
    """(N, P) unit image vectors of every image of `dataset` (centre view, no augmentation), float32 on the CPU."""
    out = []
    for start in range(0, len(dataset), batch_size):
        idx = np.arange(start, min(start + batch_size, len(dataset)))
        with autocast() if autocast else contextlib.nullcontext():
            out.append(model.encode_image(dataset.pixel_values(idx).to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_embeddings(model, ids: np.ndarray, lengths: np.ndarray, batch_size: int = 256, device="cpu",
                    autocast=None) -> torch.Tensor:
    """(M, P) unit text vectors of tokenised captions (ids (M, T) right-padded, lengths (M,))."""
    out = []
    for start in range(0, len(ids), batch_size):
        b = padded(ids[start:start + batch_size], lengths[start:start + batch_size])
        with autocast() if autocast else contextlib.nullcontext():
            out.append(model.encode_text(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


def recall_at_k(similarity: torch.Tensor, owner: np.ndarray, ks=KS) -> dict[str, dict[int, float]]:
    """similarity (N, M) image x caption, owner (M,) each caption's image -> {"image_to_text": {k: R@k},
    "text_to_image": {k: R@k}}, as fractions."""
    n, m = similarity.shape
    owner_t = torch.as_tensor(owner, dtype=torch.long)
    if owner_t.shape != (m,) or (m and (int(owner_t.min()) < 0 or int(owner_t.max()) >= n)):
        raise ValueError(f"owner must give each of the {m} captions an image in [0, {n})")
    out: dict[str, dict[int, float]] = {"image_to_text": {}, "text_to_image": {}}
    for k in ks:
        top = similarity.topk(min(k, m), dim=1).indices  # (N, k) captions nearest each image
        hit = (owner_t[top] == torch.arange(n)[:, None]).any(1)
        out["image_to_text"][k] = float(hit.double().mean())
        top = similarity.T.topk(min(k, n), dim=1).indices  # (M, k) images nearest each caption
        out["text_to_image"][k] = float((top == owner_t[:, None]).any(1).double().mean())
    return out


def chance_recall(owner: np.ndarray, n_images: int, ks=KS) -> dict[str, dict[int, float]]:
    """R@k of a ranking that ignores the content: for text -> image k / N; for image -> text the chance that k
    captions drawn from the M without replacement include one of the image's c, averaged over images."""
    m = len(owner)
    per_image = Counter(np.asarray(owner).tolist())
    counts = [per_image.get(i, 0) for i in range(n_images)]

    def miss(c: int, k: int) -> float:  # P(none of c relevant among k of m)
        return math.prod((m - c - j) / (m - j) for j in range(min(k, m))) if k < m - c + 1 else 0.0

    return {"image_to_text": {k: float(np.mean([1 - miss(c, k) for c in counts])) for k in ks},
            "text_to_image": {k: min(1.0, k / n_images) for k in ks}}


@torch.no_grad()
def match_similarity(model, dataset, images: np.ndarray, batch_size: int = 256, device="cpu",
                     autocast=None) -> tuple[torch.Tensor, np.ndarray]:
    """(N, M) image x caption scores of a model that reads each pair jointly (single-/two-stream encoders: the
    image-text matching margin, UNITER §4's retrieval), every pair of the `images` (dataset indices) and all their
    evaluation captions, in batches of `batch_size` pairs; and (M,) each caption's image (0..N-1). A two-stream model
    (`separable_streams`) encodes each caption and each image once and runs only its cross-modality layers per pair."""
    caps = dataset.eval_captions
    rows = np.concatenate([np.arange(caps.offsets[i], caps.offsets[i + 1]) for i in images])  # (M,) caption rows
    owner = np.repeat(np.arange(len(images)), np.diff(caps.offsets)[images])
    pixels = dataset.pixel_values(images)  # (N, C, S, S), no augmentation
    text = padded(caps.ids[rows], caps.lengths[rows])  # (M, T)
    n, m = len(images), len(rows)
    if getattr(model, "separable_streams", False):
        return _two_stream_scores(model, text, pixels, batch_size, device, autocast).view(n, m), owner
    scores = torch.empty(n * m)
    for start in range(0, n * m, batch_size):
        pair = torch.arange(start, min(start + batch_size, n * m))  # flat (image, caption) index, image-major
        img, cap = pair // m, pair % m
        with autocast() if autocast else contextlib.nullcontext():
            s = model.match_score(text["input_ids"][cap].to(device), pixels[img].to(device),
                                  text["attention_mask"][cap].to(device))
        scores[pair] = s.float().cpu()
    return scores.view(n, m), owner


@torch.no_grad()
def _two_stream_scores(model, text: dict, pixels: torch.Tensor, batch_size: int, device, autocast) -> torch.Tensor:
    """(N * M,) image-major ITM scores of every pair of a two-stream model (`separable_streams`): each of the M
    captions and N images goes through its own stream once (M + N single-modality passes, not N x M), then the
    cross-modality layers run on every pair, `batch_size` pairs at a time. Equal to scoring each pair with
    `match_score` (tests/unit/analysis/test_image_text.py)."""
    ctx = autocast if autocast else contextlib.nullcontext
    backbone, ids, keep = model.backbone, text["input_ids"], text["attention_mask"]
    m, n = len(ids), len(pixels)
    with ctx():
        texts = torch.cat([backbone.encode_text_stream(ids[s:s + batch_size].to(device),
                                                       keep[s:s + batch_size].to(device))[0]
                           for s in range(0, m, batch_size)])  # (M, T, H)
        images = torch.cat([backbone.encode_image_stream(pixels[s:s + batch_size].to(device))
                            for s in range(0, n, batch_size)])  # (N, P, H)
    keep = keep.to(device)
    scores = torch.empty(n * m)
    for start in range(0, n * m, batch_size):
        pair = torch.arange(start, min(start + batch_size, n * m))  # flat (image, caption) index, image-major
        img, cap = pair.to(device) // m, pair.to(device) % m
        with ctx():
            s = model.fused_match_score(texts[cap], images[img], keep[cap])
        scores[pair] = s.float().cpu()
    return scores


def retrieval(model, dataset, device="cpu", ks=KS, batch_size: int = 256, autocast=None,
              max_images: int | None = None) -> dict:
    """Recall@k both ways over `dataset`'s images and their evaluation captions, with the chance levels. A dual
    encoder (CLIP) ranks by cosine similarity; a model that scores pairs jointly (`match_score`) scores every
    image-caption pair (N x M forward passes; a two-stream model's N x M are its cross-modality layers only), so
    `max_images` may cap N: the first images of the set and their
    captions, for either kind of model (so that both are compared on the same test set)."""
    n = min(len(dataset), max_images or len(dataset))
    if hasattr(model, "match_score"):
        similarity, owner = match_similarity(model, dataset, np.arange(n), batch_size, device, autocast)
    else:
        emb = image_embeddings(model, dataset, batch_size, device, autocast)
        caps = dataset.eval_captions
        texts = text_embeddings(model, caps.ids, caps.lengths, batch_size, device, autocast)
        m = int(caps.offsets[n])  # captions are stored image by image: those of the first n images come first
        owner, similarity = dataset.eval_caption_owners()[:m], (emb @ texts.T)[:n, :m]
    return {"images": n, "captions": len(owner), "recall": recall_at_k(similarity, owner, ks),
            "chance": chance_recall(owner, n, ks)}


def class_embeddings(model, tokenizer, classes: list[str], templates: list[str], seq_len: int, device="cpu",
                     autocast=None) -> torch.Tensor:
    """(C, P) unit vectors: each class's prompts ("an emoji of {}" filled with the class name) encoded, normalised,
    averaged over the templates and normalised again (CLIP §3.1.4, prompt ensembling)."""
    prompts = [t.format(c) for c in classes for t in templates]  # (C * K,) class-major
    ids, lengths, _ = tokenize_captions(tokenizer, prompts, seq_len)
    z = text_embeddings(model, ids, lengths, device=device, autocast=autocast)  # (C * K, P)
    return F.normalize(z.view(len(classes), len(templates), -1).mean(1), dim=-1)


def zero_shot(image_vectors: torch.Tensor, class_vectors: torch.Tensor, labels: list[int]) -> dict[str, float]:
    """Accuracy of predicting each image's class as its most similar class vector, with the chance levels:
    uniform guessing (1 / C) and always the most frequent class."""
    pred = (image_vectors @ class_vectors.T).argmax(-1)  # (N,)
    y = torch.as_tensor(labels)
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    return {"accuracy": float((pred == y).float().mean()), "chance_uniform": 1 / class_vectors.shape[0],
            "chance_majority": majority, "images": len(labels), "classes": class_vectors.shape[0]}


def linear_probe(train_vectors: torch.Tensor, train_labels: list[int], test_vectors: torch.Tensor,
                 test_labels: list[int], num_classes: int, seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe trained on the frozen image vectors of the training images
    (CLIP §3.2's linear probe), with analysis.probing's probe trainer."""
    cfg = ProbeConfig(kind="linear", epochs=50, batch_size=256, min_steps=500, lr=1e-2, weight_decay=1e-4, seed=seed)
    probe = train_probe(train_vectors.numpy(), np.asarray(train_labels), num_classes, cfg)
    return probe_accuracy(probe, test_vectors.numpy(), np.asarray(test_labels))

