"""Word-level attention from token attention (Clark et al.'s sum/mean), and head-finding accuracy with its positional
baseline on hand-made attention."""

from __future__ import annotations

import pytest
import torch

from ptmkit.analysis.syntax import HeadSyntax, word_attention


def test_word_attention_sums_over_attended_pieces_and_averages_over_attending_ones():
    # tokens: [CLS] w0 w1a w1b [SEP]; one head
    p = torch.tensor([[[0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.0, 0.1, 0.3, 0.4, 0.2],
                       [0.0, 0.5, 0.1, 0.2, 0.2],
                       [0.0, 0.7, 0.1, 0.0, 0.2],
                       [0.2, 0.2, 0.2, 0.2, 0.2]]])
    w = word_attention(p, [None, 0, 1, 1, None])
    assert w.shape == (1, 2, 2)
    assert torch.allclose(w[0, 0], torch.tensor([0.1, 0.7]))  # w0 -> w1 = 0.3 + 0.4
    assert torch.allclose(w[0, 1], torch.tensor([(0.5 + 0.7) / 2, (0.3 + 0.1) / 2]))


def test_head_accuracy_and_the_positional_baseline():
    # 3 words; word 0's head is word 1 (det), word 2's head is word 1 (obj); word 1 is the root
    heads, rels = [2, 0, 2], ["det", "root", "obj"]
    good = torch.tensor([[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]], dtype=torch.float)  # finds both heads
    bad = torch.tensor([[0, 0, 1], [0.5, 0, 0.5], [1, 0, 0]], dtype=torch.float)
    h = HeadSyntax()
    h.add([torch.stack([bad, good])], heads, rels)  # one layer, two heads
    t = h.table()
    assert t["det"]["best_head_accuracy"] == 1.0 and (t["det"]["layer"], t["det"]["head"]) == (0, 1)
    assert t["det"]["baseline_offset"] == 1 and t["det"]["baseline_accuracy"] == 1.0
    assert t["obj"]["baseline_offset"] == -1 and "root" not in t
    assert t["det"]["direction"] == "dependent->head"
    assert h.table(min_count=2) == {}


def test_a_head_attending_back_to_its_dependent_counts_as_the_other_direction():
    # as in a causal LM, the determiner (word 0) does not attend to its noun (word 1, ahead of it): the noun attends
    # back to it, so det is found head -> dependent; obj (word 2) attends back to its head, dependent -> head
    heads, rels = [2, 0, 2], ["det", "root", "obj"]
    causal = torch.tensor([[1, 0, 0.1], [0.9, 0, 0.1], [0, 1, 0]], dtype=torch.float)
    h = HeadSyntax()
    h.add([causal[None]], heads, rels)
    t = h.table()
    assert t["det"]["direction"] == "head->dependent" and t["det"]["best_head_accuracy"] == 1.0
    assert t["obj"]["direction"] == "dependent->head" and t["obj"]["best_head_accuracy"] == 1.0
