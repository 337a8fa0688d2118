"""The visual vocabulary of masked region classification (objectives/vlp.py): k-means codewords of raw patch pixels.

UNITER's MRC (Chen et al. 2020 §3.2) predicts the object class a detector gave the masked region; ptmkit has no
detector, so a patch's class is its nearest k-means centre among patch pixels of the training images — the codebook
is fitted once per run from the cached images (recipes/vl_pretrain.py), stored with the run (codebook.safetensors) and
inside the model (VLPreTraining's `codebook` buffer), and a codebook of another shape or patch layout is refused.

Dimension legend: M patches sampled, F pixels per patch, K codewords.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ptmkit import atomic
from ptmkit.config import ConfigError


def fit_codebook(patches: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """(M, F) patch features -> (K, F) k-means centres (Lloyd 1982), seeded by k-means++ (Arthur & Vassilvitskii 2007)
    so that rare patches (an emoji's red outline among white background) get codewords of their own. A centre left
    without members is moved to the point farthest from its centre."""
    x = patches.float()
    m = x.shape[0]
    if m < k:
        raise ValueError(f"k-means needs at least {k} patches to fit {k} codewords, got {m}; lower "
                         "model.config.num_visual_classes or add images")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(m, (1,), generator=g)]  # (1, F)
    d2 = torch.cdist(x, centres).squeeze(1).square()  # (M,)
    for _ in range(1, k):  # k-means++: each new centre drawn with probability proportional to squared distance
        pick = torch.multinomial(d2 + 1e-12, 1, generator=g)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, (x - x[pick]).square().sum(-1))
    for _ in range(iterations):
        dist = torch.cdist(x, centres)  # (M, K)
        assign = dist.argmin(1)  # (M,)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)  # (K, F)
        counts = torch.bincount(assign, minlength=k).float()  # (K,)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            far = dist.gather(1, assign[:, None]).squeeze(1).topk(int(empty.sum())).indices
            centres[empty] = x[far]
    return centres


def save_codebook(path: str | Path, codebook: torch.Tensor, meta: dict) -> Path:
    """codebook.safetensors: the (K, F) centres and, as metadata, the patch layout and normalisation they assume."""
    data = save({"codebook": codebook.detach().cpu().contiguous()}, metadata={"ptmkit": json.dumps(meta)})
    return atomic.write_bytes(path, data)


def load_codebook(path: str | Path, expect: dict) -> torch.Tensor:
    """The centres of a saved codebook, refused when its layout (patch size, channels, normalisation) differs from
    `expect`, each difference named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codebook {path} does not exist; leave objective.params.codebook empty to fit one "
                                "from the training images")
    with safe_open(str(path), framework="pt") as f:
        codebook = f.get_tensor("codebook")
        meta = json.loads((f.metadata() or {}).get("ptmkit", "{}"))
    differ = [f"{k} {meta.get(k)!r} (this run: {v!r})" for k, v in expect.items() if meta.get(k) != v]
    if differ:
        raise ConfigError(f"codebook {path} was fitted for another patch layout: {', '.join(differ)}; fit a new one "
                          "(leave objective.params.codebook empty) or match the run to it")
    return codebook
