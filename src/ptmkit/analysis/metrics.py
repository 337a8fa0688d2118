"""Evaluation metrics for adapted models: accuracy, F1, Matthews, Pearson/Spearman, entity-level F1.
Numpy-vectorised; entity extraction follows conlleval / seqeval (default mode) exactly."""

# Every metric takes ``(predictions, references)`` (lists, numpy arrays or torch tensors on any
# device) and returns a Python float. Classification metrics accept class ids, strings, or (N, C)
# scores (arg-maxed). Degenerate cases follow scikit-learn: F1 is 0 when there is nothing to score,
# and Matthews / Pearson / Spearman are 0 when either side is constant (scipy returns nan there; a
# 0 keeps best-checkpoint selection well defined). References: GLUE (Wang et al. 2019) for the task
# metrics; Gorodkin 2004 for K-class MCC; conlleval (Tjong Kim Sang & De Meulder 2003) and seqeval
# for entity scores.

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ptmkit.config import ConfigError

# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator; no torch import needed
        x = x.detach().cpu()
        # bf16 / fp8 have no numpy dtype: score floats in float64
        x = (x.double() if x.is_floating_point() else x).numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(
            f"{what} could not be turned into a flat array (ragged nesting or mixed types); "
            "pass one label or score per example"
        )
    return a


def _pair(predictions: Any, references: Any, *, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate and align a predictions / references pair; arg-max (N, C) class scores."""
    p = _to_numpy(predictions, "predictions")
    r = _to_numpy(references, "references")
    if regression:
        # (N, 1) regression heads are common: flatten them
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if r.ndim == 2 and r.shape[1] == 1:
            r = r[:, 0]
    elif p.ndim == 2 and r.ndim == 1:
        p = p.argmax(axis=-1)  # (N, C) logits / probabilities -> (N,) class ids
    if p.ndim != 1 or r.ndim != 1:
        raise ValueError(
            f"expected one value per example, got predictions of shape {p.shape} and references "
            f"of shape {r.shape}; flatten them (or pass (N, C) class scores for classification)"
        )
    if len(p) != len(r):
        raise ValueError(
            f"predictions has {len(p)} items but references has {len(r)}; they must be aligned"
        )
    if len(p) == 0:
        raise ValueError("cannot score 0 examples: predictions and references are empty")
    if regression:
        for a, what in ((p, "predictions"), (r, "references")):
            if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
                raise ValueError(f"{what} must be numbers for a correlation, got dtype {a.dtype}")
        p, r = p.astype(np.float64), r.astype(np.float64)
        for a, what in ((p, "predictions"), (r, "references")):
            bad = np.flatnonzero(~np.isfinite(a))
            if len(bad):
                raise ValueError(
                    f"{what}[{bad[0]}] is {a[bad[0]]} ({len(bad)} non-finite values in all); "
                    "a correlation needs finite numbers: check the model output for nan/inf"
                )
    else:
        p_text, r_text = p.dtype.kind in "US", r.dtype.kind in "US"
        if p_text != r_text:
            raise ValueError(
                f"predictions are {'strings' if p_text else 'numbers'} but references are "
                f"{'strings' if r_text else 'numbers'}, so nothing would ever match; map both to "
                "class ids (or both to label names) first"
            )
    return p, r


def _confusion(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix over the union of labels: rows = reference, columns = prediction."""
    labels, inv = np.unique(np.concatenate([r, p]), return_inverse=True)
    k, n = len(labels), len(r)
    cm = np.bincount(inv[:n] * k + inv[n:], minlength=k * k).reshape(k, k)  # (K_true, K_pred)
    return cm, labels


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------


def accuracy(predictions: Any, references: Any) -> float:
    """Fraction of exact matches."""
    p, r = _pair(predictions, references, regression=False)
    return float(np.mean(p == r))


def f1(predictions: Any, references: Any, pos_label: Any = 1) -> float:
    """Binary F1 of the class ``pos_label`` (GLUE MRPC / QQP). 0.0 when there is nothing to score.

    Like scikit-learn's ``f1_score(average="binary")``: more than two distinct labels is an error
    (use :func:`macro_f1`), and so is a ``pos_label`` absent from two present labels.
    """
    p, r = _pair(predictions, references, regression=False)
    present = np.unique(np.concatenate([r, p]))
    if len(present) > 2:
        raise ValueError(
            f"binary F1 needs at most two labels, found {len(present)}: {present[:10].tolist()}; "
            "use 'macro_f1' for multi-class tasks"
        )
    if len(present) == 2 and pos_label not in present.tolist():
        raise ValueError(
            f"pos_label={pos_label!r} is not one of the labels present {present.tolist()}; "
            "pass the positive class as pos_label"
        )
    pp, rp = p == pos_label, r == pos_label
    tp = np.count_nonzero(pp & rp)
    denom = np.count_nonzero(pp) + np.count_nonzero(rp)  # = 2tp + fp + fn
    return 0.0 if denom == 0 else float(2 * tp / denom)


def macro_f1(predictions: Any, references: Any) -> float:
    """Unweighted mean of per-class F1 over every label seen in either input (scikit-learn)."""
    p, r = _pair(predictions, references, regression=False)
    cm, _ = _confusion(p, r)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2tp + fp + fn, per class
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(per_class.mean())


def matthews_corrcoef(predictions: Any, references: Any) -> float:
    """Matthews correlation, general K-class form (Gorodkin 2004); 0.0 when either side is constant.

    MCC = (c·s − t·p) / sqrt((s² − p·p)(s² − t·t)) with t, p the per-class true / predicted
    counts, c the number correct and s the number of examples. For K = 2 it is the phi
    coefficient.
    """
    p, r = _pair(predictions, references, regression=False)
    cm, _ = _confusion(p, r)
    cm = cm.astype(np.float64)  # float: s² overflows nothing and keeps the division exact enough
    t, q = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    cov_tq = c * s - t @ q
    cov_qq = s * s - q @ q
    cov_tt = s * s - t @ t
    if cov_qq == 0.0 or cov_tt == 0.0:
        return 0.0
    return float(np.clip(cov_tq / np.sqrt(cov_tt * cov_qq), -1.0, 1.0))


# --------------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # exact constancy test: a mean of equal floats can differ from them by one ulp, and the
    # resulting ~1e-17 residuals would otherwise produce a meaningless correlation
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    xm, ym = x - x.mean(), y - y.mean()
    # normalise before the dot product so huge values cannot overflow the sum of squares
    r = np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym))
    return float(np.clip(r, -1.0, 1.0))


def pearson(predictions: Any, references: Any) -> float:
    """Pearson's r (GLUE STS-B); 0.0 when either side is constant."""
    p, r = _pair(predictions, references, regression=True)
    return _pearson(p, r)


def rankdata(x: Any) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata(method="average")``)."""
    a = np.asarray(x).ravel()
    n = len(a)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new_group = np.empty(n, dtype=bool)
    new_group[:1] = True
    np.not_equal(s[1:], s[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)  # first sorted position of each tie group
    sizes = np.diff(np.append(starts, n))
    avg = starts + (sizes + 1) / 2.0  # mean of the 1-based ranks start+1 .. start+size
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, sizes)
    return ranks


def spearman(predictions: Any, references: Any) -> float:
    """Spearman's rho = Pearson's r of average ranks (ties share their mean rank)."""
    p, r = _pair(predictions, references, regression=True)
    return _pearson(rankdata(p), rankdata(r))


# --------------------------------------------------------------------------------------------
# entity-level scores for sequence labelling (conlleval / seqeval semantics)
# --------------------------------------------------------------------------------------------

# prefix codes; a tag is "O" or "<prefix>-<TYPE>"
_O, _B, _I, _E, _S = 0, 1, 2, 3, 4
_PREFIX = {"B": _B, "I": _I, "E": _E, "S": _S}
_SCHEME_PREFIXES = {"iob1": "BI", "iob2": "BI", "iobes": "BIES"}
_TAG_RE = re.compile(r"^([BIES])-(.+)$")


def _sequences(tags: Any, what: str, tag_names: Sequence[str] | None) -> list[Any]:
    if isinstance(tags, str) or hasattr(tags, "detach"):
        raise ValueError(
            f"{what} must be a list of tag sequences (one per sentence), got {type(tags).__name__}"
        )
    seqs = list(tags)
    if seqs and isinstance(seqs[0], (str, int, np.integer)):
        seqs = [seqs]  # a single sentence, as seqeval accepts
    if tag_names is None:
        for i, s in enumerate(seqs):
            if len(s) and not isinstance(s[0], str):
                raise ValueError(
                    f"{what}[{i}] holds {type(s[0]).__name__} tags; pass tag_names=[...] to map "
                    "integer tag ids to tag strings"
                )
    return seqs


def _flat_tags(seqs: list[Any], what: str, tag_names: Sequence[str] | None) -> np.ndarray:
    """Concatenate the sentences into one string array (no separators)."""
    if tag_names is None:
        flat: list[str] = []
        for s in seqs:
            flat.extend(s)
        return np.array(flat, dtype=str)
    ids = np.concatenate(
        [np.asarray(s, dtype=np.int64).ravel() for s in seqs] or [np.zeros(0, np.int64)]
    )
    bad = np.flatnonzero((ids < 0) | (ids >= len(tag_names)))
    if len(bad):
        raise ValueError(
            f"{what} holds tag id {ids[bad[0]]}, outside tag_names (0..{len(tag_names) - 1}); "
            "strip padding / ignored positions (e.g. -100) before scoring"
        )
    return np.asarray(list(tag_names), dtype=str)[ids]


def _encode(seqs: list[Any], what: str, scheme: str, tag_names: Sequence[str] | None):
    """Tags -> (prefix codes, type ids, type names, sentence lengths), one "O" after each sentence.

    The trailing "O" is seqeval's own flattening: it closes every entity at a sentence end, so
    entities never cross sentences and positions are global offsets into the flattened array.
    """
    if scheme not in _SCHEME_PREFIXES:
        raise ConfigError(
            f"unknown tag scheme {scheme!r}; choose one of {sorted(_SCHEME_PREFIXES)}"
        )
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tags = _flat_tags(seqs, what, tag_names)
    uniq, inv = np.unique(tags, return_inverse=True)
    inv = inv.ravel()
    ucode = np.zeros(len(uniq), dtype=np.int8)
    utype = np.full(len(uniq), -1, dtype=np.int64)
    type_names: list[str] = []
    allowed = _SCHEME_PREFIXES[scheme]
    for k, tag in enumerate(uniq.tolist()):  # only the distinct tags are parsed in Python
        if tag == "O":
            continue
        m = _TAG_RE.match(tag)
        if m is None or m.group(1) not in allowed:
            pos = int(np.flatnonzero(inv == k)[0])
            sent = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
            tok = pos - int(lengths[:sent].sum())
            fix = (
                "use scheme='iobes' for E-/S- tags"
                if m is not None
                else f"tags must be 'O' or one of {list(allowed)} + '-TYPE'"
            )
            raise ValueError(
                f"{what}[{sent}][{tok}] is {tag!r}, not a valid {scheme.upper()} tag; {fix}"
            )
        ucode[k] = _PREFIX[m.group(1)]
        name = m.group(2)
        if name not in type_names:
            type_names.append(name)
        utype[k] = type_names.index(name)
    code, typ = ucode[inv], utype[inv]
    # append the sentence-closing "O" after every sentence: (N_tokens + N_sentences,)
    ends = np.cumsum(lengths)
    code = np.insert(code, ends, _O)
    typ = np.insert(typ, ends, -1)
    return code, typ, type_names, lengths


def _chunks(code: np.ndarray, typ: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised seqeval ``get_entities``: (start, end inclusive, type id) of every entity.

    A chunk ends before token i when (seqeval ``end_of_chunk``): the previous tag is E or S; the
    previous is B/I and this one is B, S or O; or the previous is inside an entity of another type.
    A chunk starts at token i when (``start_of_chunk``): the tag is B or S; an I/E follows O, E or
    S; or the type changes. So an I- after O or after another type opens an entity, in IOB1 and (as
    conlleval does) in IOB2. Starts and ends alternate, so the k-th start pairs with the k-th end.
    """
    prev = np.full_like(code, _O)  # (L,) previous token's prefix; "O" before the first token
    prev[1:] = code[:-1]
    prev_t = np.full_like(typ, -1)  # (L,) previous token's type id
    prev_t[1:] = typ[:-1]
    type_change = typ != prev_t
    end = (
        (prev == _E)
        | (prev == _S)
        | (((prev == _B) | (prev == _I)) & ((code == _B) | (code == _S) | (code == _O)))
        | ((prev != _O) & type_change)
    )
    start = (
        (code == _B)
        | (code == _S)
        | (((prev == _E) | (prev == _S) | (prev == _O)) & ((code == _I) | (code == _E)))
        | ((code != _O) & type_change)
    )
    starts = np.flatnonzero(start)
    stops = np.flatnonzero(end) - 1  # an end flagged at i closes the chunk at i - 1
    assert len(starts) == len(stops), "internal error: unpaired entity boundaries"
    return starts, stops, typ[starts]


def extract_entities(tags: Sequence[str], scheme: str = "iob2") -> list[tuple[str, int, int]]:
    """Entities of one tag sequence as ``(type, start, end_inclusive)``: seqeval's get_entities."""
    code, typ, names, _ = _encode(_sequences(list(tags), "tags", None), "tags", scheme, None)
    starts, stops, types = _chunks(code, typ)
    return [
        (names[t], int(a), int(b))
        for a, b, t in zip(starts.tolist(), stops.tolist(), types.tolist(), strict=True)
    ]


def entity_scores(
    predictions: Any,
    references: Any,
    scheme: str = "iob2",
    tag_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Micro precision / recall / F1 over exact-match entities, plus a per-type breakdown.

    ``predictions`` / ``references``: one tag sequence per sentence (strings, or integer ids with
    ``tag_names``). An entity counts as correct only when its type, start and end all match. IOB1
    and IOB2 decode identically under conlleval; ``scheme`` decides which prefixes are legal
    ("iobes" adds E-/S-). Returns ``{"precision", "recall", "f1", "per_type"}``, where
    ``per_type[type]`` holds precision, recall, f1 and support (the number of reference entities).
    """
    ps = _sequences(predictions, "predictions", tag_names)
    rs = _sequences(references, "references", tag_names)
    if len(ps) != len(rs):
        raise ValueError(f"predictions has {len(ps)} sentences but references has {len(rs)}")
    p_code, p_typ, p_names, p_len = _encode(ps, "predictions", scheme, tag_names)
    r_code, r_typ, r_names, r_len = _encode(rs, "references", scheme, tag_names)
    mismatch = np.flatnonzero(p_len != r_len)
    if len(mismatch):
        i = int(mismatch[0])
        raise ValueError(
            f"sentence {i} has {p_len[i]} predicted tags but {r_len[i]} reference tags; "
            "predict exactly one tag per reference token (drop sub-word and padding positions)"
        )
    names = sorted(set(p_names) | set(r_names))
    k = max(len(names), 1)
    p_map = np.array([names.index(n) for n in p_names] or [0], dtype=np.int64)
    r_map = np.array([names.index(n) for n in r_names] or [0], dtype=np.int64)
    n = len(p_code) + 1

    def keys(code, typ, tmap):
        a, b, t = _chunks(code, typ)
        t = tmap[t]
        return (a * n + b) * k + t, t  # one int64 per entity: (start, end, type)

    p_keys, p_t = keys(p_code, p_typ, p_map)
    r_keys, r_t = keys(r_code, r_typ, r_map)
    hit = np.intersect1d(p_keys, r_keys, assume_unique=True)
    n_pred = np.bincount(p_t, minlength=k)
    n_true = np.bincount(r_t, minlength=k)
    n_hit = np.bincount(hit % k, minlength=k)

    def prf(c, npred, ntrue):
        prec = c / npred if npred else 0.0
        rec = c / ntrue if ntrue else 0.0
        f = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return float(prec), float(rec), float(f)

    prec, rec, f = prf(len(hit), len(p_keys), len(r_keys))
    per_type = {}
    for j, name in enumerate(names):
        pj, rj, fj = prf(int(n_hit[j]), int(n_pred[j]), int(n_true[j]))
        per_type[name] = {"precision": pj, "recall": rj, "f1": fj, "support": int(n_true[j])}
    return {"precision": prec, "recall": rec, "f1": f, "per_type": per_type}


def entity_precision(predictions: Any, references: Any) -> float:
    """Micro precision over exact-match entities (IOB1 / IOB2 tags)."""
    return entity_scores(predictions, references)["precision"]


def entity_recall(predictions: Any, references: Any) -> float:
    """Micro recall over exact-match entities (IOB1 / IOB2 tags)."""
    return entity_scores(predictions, references)["recall"]


def entity_f1(predictions: Any, references: Any) -> float:
    """Micro F1 over exact-match entities (conlleval's headline number)."""
    return entity_scores(predictions, references)["f1"]


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "entity_precision": entity_precision,
    "entity_recall": entity_recall,
    "entity_f1": entity_f1,
}

_ENTITY = {"entity_precision": "precision", "entity_recall": "recall", "entity_f1": "f1"}


def compute_metrics(names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
    """``{name: METRICS[name](predictions, references)}`` for every name, in order.

    Entity metrics share one decoding pass. Unknown names are a ConfigError listing the choices.
    """
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        hints = {n: difflib.get_close_matches(n, METRICS, n=1) for n in unknown}
        hint = "; ".join(f"{n!r} -> did you mean {h[0]!r}?" for n, h in hints.items() if h)
        raise ConfigError(
            f"unknown metric(s) {unknown}; available: {sorted(METRICS)}"
            + (f" ({hint})" if hint else "")
        )
    out: dict[str, float] = {}
    entity: dict[str, Any] | None = None
    for name in names:
        if name in _ENTITY:
            if entity is None:
                entity = entity_scores(predictions, references)
            out[name] = entity[_ENTITY[name]]
        else:
            out[name] = METRICS[name](predictions, references)
    return out
