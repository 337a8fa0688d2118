"""Entity linking by dictionary (objectives/linking.py), built on the entity objective's DictionarySpanFinder: the
right entity at each mention's first token, one-token names included, the most frequent sense for a shared label,
and a whole stream linked once the same way as its documents one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.data.kg import KnowledgeGraph
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives.entity import DictionarySpanFinder
from ptmkit.objectives.linking import EntityLinker, link_stream

TEXTS = ["alan turing was born in london and worked in manchester .",
         "paris is the capital of france , far from new york .",
         "the city of new york lies in the united states ."] * 30


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, "wordpiece", 120, min_frequency=1)


@pytest.fixture(scope="module")
def kg():
    # Q2 and Q7 share the label "Paris"; Q2 is in two triples, Q7 in none: the link goes to Q2
    ents = {"Q1": "Alan Turing", "Q2": "Paris", "Q3": "France", "Q4": "New York", "Q5": "London",
            "Q6": "United States", "Q7": "Paris"}
    triples = [("Q1", "P19", "Q5"), ("Q2", "P17", "Q3"), ("Q4", "P17", "Q6"), ("Q2", "P31", "Q3")]
    return KnowledgeGraph.from_records(ents, ["P19", "P17", "P31"], triples)


def _ids(tok, text):
    return torch.tensor([tok.encode(text, add_special_tokens=False)])


def test_the_linker_reuses_the_span_finder_and_names_each_entity(tok, kg):
    linker = EntityLinker.from_kg(kg, tok)
    assert isinstance(linker.finder, DictionarySpanFinder) and linker.finder.min_len == 1
    text = "alan turing left london for paris , then new york ."
    ids = _ids(tok, text)
    entities, lengths = linker(ids)
    found = {tok.decode(ids[0, s:s + int(lengths[0, s])].tolist()): kg.entities[int(entities[0, s]) - 1]
             for s in entities[0].nonzero().flatten().tolist()}
    assert found == {"alan turing": "Q1", "london": "Q5", "paris": "Q2", "new york": "Q4"}
    assert ((entities > 0) == (lengths > 0)).all()  # an entity exactly where a mention starts


def test_a_stream_is_linked_once_like_its_documents_one_by_one(tok, kg):
    linker = EntityLinker.from_kg(kg, tok)
    docs = [tok.encode(t, add_special_tokens=False) for t in TEXTS[:3]] * 40
    docs[5] = docs[5][:-3] + tok.encode("new", add_special_tokens=False)  # "new" | "york ..." across a boundary
    docs[6] = tok.encode("york is large .", add_special_tokens=False)
    stream = np.concatenate([np.array(d) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    got, counts = link_stream(stream, offsets, linker, row=16, rows_per_batch=3)  # many rows and batches
    want = np.concatenate([linker(torch.tensor([d]))[0][0].numpy() for d in docs])
    assert np.array_equal(got, want)
    assert counts["mentions"] == int((want > 0).sum())


def test_a_graph_no_label_of_which_the_tokenizer_knows_is_refused(tok):
    kg = KnowledgeGraph.from_records({"Q1": "Ωμέγα"}, ["P1"], [("Q1", "P1", "Q1")])
    with pytest.raises(ConfigError, match="no entity label of the graph encodes to known tokens"):
        EntityLinker.from_kg(kg, tok)
