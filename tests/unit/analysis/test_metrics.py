"""Tests for ptmkit.analysis.metrics: hand-computed values, degenerate cases, and literals computed
once with scikit-learn 1.9 / scipy 1.17 / seqeval 1.2.2 (none of them is a dependency)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ptmkit.analysis.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    entity_f1,
    entity_precision,
    entity_recall,
    entity_scores,
    extract_entities,
    f1,
    macro_f1,
    matthews_corrcoef,
    pearson,
    rankdata,
    spearman,
)
from ptmkit.config import ConfigError

# fixed inputs whose reference values were computed with sklearn / scipy (see module docstring)
P3 = [2, 1, 2, 2, 1, 2, 2, 0, 0, 0, 0, 2, 2, 0, 1, 2, 0, 2, 0, 1]
R3 = [2, 0, 1, 0, 2, 0, 2, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 2]
PB = [0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1]
RB = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0]
X = [3.0, 1.0, 5.0, 5.0, 1.0, 3.0, 5.0, 5.0, 4.0, 3.0, 0.0, 4.0, 2.0, 0.0, 1.0]
Y = [3.5, 2.5, 4.5, 4.5, 3.5, 3.5, 3.5, 4.5, 4.0, 1.5, 0.0, 4.0, 2.0, 2.0, 1.5]


# ---------------------------------------------------------------- classification


def test_accuracy_hand_and_logits():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy(["a", "b"], ["a", "b"]) == 1.0
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])  # (N, C) -> argmax [0, 1, 0]
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert accuracy(P3, R3) == pytest.approx(0.15)


def test_binary_f1_hand():
    p, r = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert f1(p, r) == pytest.approx(4 / 6)  # tp=2 fp=1 fn=1
    assert f1(p, r, pos_label=0) == pytest.approx(0.5)  # tp=1 fp=1 fn=1
    assert f1(PB, RB) == pytest.approx(0.4444444444444444)  # sklearn
    assert f1(PB, RB, pos_label=0) == pytest.approx(0.5454545454545454)


def test_binary_f1_without_positives_is_zero():
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0  # nothing to score (sklearn zero_division=0)
    assert f1([0, 0], [1, 0]) == 0.0  # every positive missed
    assert f1([1, 0], [0, 0]) == 0.0  # only false positives


def test_binary_f1_rejects_multiclass_and_absent_pos_label():
    with pytest.raises(ValueError, match="macro_f1"):
        f1([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="pos_label"):
        f1(["neg", "pos"], ["pos", "neg"])  # default pos_label=1 is not a label here
    assert f1(["neg", "pos"], ["pos", "pos"], pos_label="pos") == pytest.approx(2 / 3)


def test_macro_f1():
    # per class: 0 -> 2/3, 1 -> 1/2, 2 -> 2/5 ; mean = 47/90 (sklearn 0.5222222222222221)
    assert macro_f1([0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 2]) == pytest.approx(47 / 90)
    assert macro_f1(P3, R3) == pytest.approx(0.11764705882352942)
    assert macro_f1(PB, RB) == pytest.approx(0.4949494949494949)


def test_matthews_hand_and_reference():
    # tp=2 tn=2 fp=1 fn=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    assert matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(1 / 3)
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert matthews_corrcoef([0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 2]) == pytest.approx(
        0.26111648393354675
    )
    assert matthews_corrcoef(P3, R3) == pytest.approx(-0.2760353347844234)
    assert matthews_corrcoef(PB, RB) == pytest.approx(0.0, abs=1e-12)


def test_matthews_degenerate_is_zero():
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant predictions
    assert matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # constant references
    assert matthews_corrcoef([2, 2], [2, 2]) == 0.0


def test_classification_input_errors():
    with pytest.raises(ValueError, match="3 items but references has 2"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="strings but references are numbers"):
        accuracy(["0", "1"], [0, 1])


# ---------------------------------------------------------------- regression


def test_pearson_hand_and_reference():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 4 / sqrt(5 * 5)
    assert pearson(X, Y) == pytest.approx(0.7970127341083719)
    assert pearson(np.array(X)[:, None], Y) == pytest.approx(0.7970127341083719)  # (N, 1) head


def test_rankdata_average_ties():
    np.testing.assert_array_equal(rankdata([10, 20, 10, 30, 20, 10]), [2, 4.5, 2, 6, 4.5, 2])
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0]), [3, 1, 2])


def test_spearman_with_ties():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505139)  # scipy
    assert spearman(X, Y) == pytest.approx(0.8217944733749097)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_correlations_degenerate_and_bad_input():
    assert pearson([0.1, 0.1, 0.1], [1, 2, 3]) == 0.0  # constant: 0, not nan
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    with pytest.raises(ValueError, match=r"predictions\[1\] is nan"):
        pearson([1.0, float("nan"), 2.0], [1, 2, 3])


# ---------------------------------------------------------------- entities


def test_entities_iob1():
    tags = ["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-ORG", "O", "B-MISC"]
    # seqeval get_entities, verbatim
    assert extract_entities(tags, "iob1") == [
        ("PER", 0, 1),
        ("PER", 2, 3),
        ("LOC", 5, 5),
        ("ORG", 6, 6),
        ("MISC", 8, 8),
    ]


def test_entities_iob2_stray_inside_starts_entity():
    tags = ["O", "I-PER", "I-PER", "B-PER", "O", "B-LOC", "I-ORG", "I-ORG"]
    assert extract_entities(tags, "iob2") == [
        ("PER", 1, 2),
        ("PER", 3, 3),
        ("LOC", 5, 5),
        ("ORG", 6, 7),
    ]
    # a type change inside a chunk splits it
    assert extract_entities(["B-PER", "I-LOC", "I-LOC", "B-LOC", "B-LOC"]) == [
        ("PER", 0, 0),
        ("LOC", 1, 2),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
    ]
    assert extract_entities([]) == []
    assert extract_entities(["O", "O"]) == []


def test_entities_iobes():
    tags = ["S-PER", "B-LOC", "E-LOC", "B-ORG", "I-ORG", "E-ORG", "O", "S-MISC"]
    assert extract_entities(tags, "iobes") == [
        ("PER", 0, 0),
        ("LOC", 1, 2),
        ("ORG", 3, 5),
        ("MISC", 7, 7),
    ]


def test_entity_scores_hand_and_seqeval():
    refs = [["B-PER", "I-PER", "O", "B-LOC"]]
    preds = [["B-PER", "O", "O", "B-LOC"]]  # PER truncated, LOC right
    s = entity_scores(preds, refs)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    assert s["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_type"]["PER"]["f1"] == 0.0

    refs = [
        ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-LOC", "O", "I-ORG"],
        ["B-MISC", "I-MISC", "O", "I-PER"],
        ["O", "O"],
    ]
    preds = [
        ["I-PER", "I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O", "I-MISC"],
        ["B-MISC", "I-MISC", "O", "B-PER"],
        ["I-ORG", "O"],
    ]
    # by hand: 6 true, 7 predicted, 2 correct; seqeval: 0.2857142857142857 0.3333333333333333
    assert entity_precision(preds, refs) == pytest.approx(2 / 7)
    assert entity_recall(preds, refs) == pytest.approx(1 / 3)
    assert entity_f1(preds, refs) == pytest.approx(0.30769230769230765)


def test_entities_never_cross_sentences():
    refs = [["B-PER"], ["I-PER"]]
    s = entity_scores([["B-PER"], ["I-PER"]], refs)
    assert s["per_type"]["PER"]["support"] == 2 and s["f1"] == 1.0
    # a single flat sentence is accepted, as seqeval does
    assert entity_f1(["B-PER", "I-PER"], ["B-PER", "I-PER"]) == 1.0
    assert entity_f1([["O"]], [["O"]]) == 0.0  # no entities anywhere


def test_entity_scores_integer_ids():
    names = ["O", "B-PER", "I-PER"]
    s = entity_scores([[1, 2, 0]], [np.array([1, 2, 0])], tag_names=names)
    assert s["f1"] == 1.0
    with pytest.raises(ValueError, match="-100"):
        entity_scores([[1, -100]], [[1, 0]], tag_names=names)
    with pytest.raises(ValueError, match="tag_names"):
        entity_scores([[1, 2]], [[1, 2]])


def _seqeval_entities(seq):
    """Literal port of seqeval 1.2.2 get_entities (default mode): an oracle for random input."""
    prev_tag, prev_type, begin, chunks = "O", "", 0, []
    for i, chunk in enumerate(list(seq) + ["O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        end = (
            prev_tag in "ES"
            or (prev_tag in "BI" and tag in "BSO")
            or (prev_tag != "O" and prev_type != type_)
        )
        start = (
            tag in "BS"
            or (prev_tag in "ESO" and tag in "EI")
            or (tag != "O" and prev_type != type_)
        )
        if end:
            chunks.append((prev_type, begin, i - 1))
        if start:
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def test_entities_match_seqeval_port_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    for _ in range(500):
        seq = rng.choices(tags, k=rng.randint(0, 15))
        assert extract_entities(seq, "iobes") == _seqeval_entities(seq), seq


def test_entity_errors():
    with pytest.raises(ValueError, match=r"references\[1\]\[2\] is 'X-PER'"):
        entity_scores([["O"], ["O", "O", "O"]], [["O"], ["O", "O", "X-PER"]])
    with pytest.raises(ValueError, match="iobes"):
        extract_entities(["S-PER"], "iob2")
    with pytest.raises(ValueError, match="sentence 1 has 2 predicted tags but 3"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O", "O", "O"]])
    with pytest.raises(ValueError, match="1 sentences but references has 2"):
        entity_scores([["O"]], [["O"], ["O"]])
    with pytest.raises(ConfigError, match="unknown tag scheme"):
        extract_entities(["O"], "bilou")


# ---------------------------------------------------------------- registry


def test_compute_metrics():
    out = compute_metrics(
        ["f1", "accuracy", "matthews_corrcoef"], [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    )
    assert list(out) == ["f1", "accuracy", "matthews_corrcoef"]
    assert out == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6, "matthews_corrcoef": 1 / 3})
    ent = compute_metrics(
        ["entity_f1", "entity_precision", "entity_recall"],
        [["B-PER", "O", "O", "B-LOC"]],
        [["B-PER", "I-PER", "O", "B-LOC"]],
    )
    assert ent == {"entity_f1": 0.5, "entity_precision": 0.5, "entity_recall": 0.5}
    assert compute_metrics(["pearson", "spearman"], X, Y) == pytest.approx(
        {"pearson": 0.7970127341083719, "spearman": 0.8217944733749097}
    )
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        compute_metrics(["acuracy"], [0], [0])


def test_every_task_metric_is_registered():
    from ptmkit.data.tasks import TASK_METRICS

    for task, names in TASK_METRICS.items():
        assert names, task
        assert set(names) <= set(METRICS), (task, set(names) - set(METRICS))
