"""REALM at test time (Guu et al. 2020 §2.2, §4): a finished `realm` pre-training run's reader with the retriever it
trained (the query encoder, and the index as last refreshed, written beside the reader as RUN/retriever by the
objective's save_exports), joined by the REALM objective itself, so that a cloze is scored by the same retrieval,
[x ; z] rows and marginal as the masked tokens were in pre-training:

    model, tokenizer, realm = load_realm("runs/realm/pretrain/realm")
    probe_masked_lm(model, tokenizer, facts, template, retrieval=realm)   # LAMA with retrieval
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ptmkit.config import ConfigError, from_dict
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import load_model
from ptmkit.objectives.mlm import MaskedLM, MLMConfig
from ptmkit.objectives.realm import REALM, REALMConfig
from ptmkit.retrieval.retriever import Retriever


def load_realm(run: str | os.PathLike, *, k: int | None = None, null_passage: bool | None = None,
               index: str | os.PathLike | None = None, query_encoder: str | os.PathLike | None = None):
    """(reader, tokenizer, REALM objective) of a finished realm run, for test-time reading (REALM.mask_log_probs).
    The run's objective settings (temperature, passage length, k, null passage) are kept unless k / null_passage
    are given. index / query_encoder: another index and a query encoder trained against it (default: the run's
    RUN/retriever); the pair is checked (Retriever.load refuses a query encoder trained against other vectors)."""
    run = Path(run)
    rc = run / "run_config.json"
    if not rc.is_file() or not (run / "model").is_dir():
        raise ConfigError(f"{run} is not a finished pre-training run (no run_config.json and model/); pass the out "
                          "directory of `ptm pretrain configs/realm-mini.yaml`")
    cfg = json.loads(rc.read_text())
    objective = cfg.get("objective", {})
    if objective.get("name") != "realm":
        raise ConfigError(f"{run} was pre-trained with objective {objective.get('name')!r}, not realm: it has no "
                          "retriever. Probe its reader alone (probe_masked_lm without retrieval), or pass a realm run")
    if index is None:
        saved = run / "retriever"
        if not (saved / "index" / "manifest.json").is_file() or not (saved / "query_encoder").is_dir():
            raise ConfigError(f"{run} has no trained retriever ({saved}: index/ and query_encoder/); the run did not "
                              "finish, or predates saving it. Export its last checkpoint (ptm convert "
                              f"{run}/checkpoints/step-N OUT writes OUT/model and OUT/retriever) and pass "
                              "index=OUT/retriever/index, query_encoder=OUT/retriever/query_encoder")
        index, query_encoder = saved / "index", saved / "query_encoder"
    tokenizer = Tokenizer.load(run / "model")
    params = {**objective.get("params", {}), "index": str(index), "mask_token_id": tokenizer.mask_id,
              "vocab_size": tokenizer.vocab_size, "special_token_ids": tokenizer.all_special_ids}
    if k is not None:
        params["k"] = k
    if null_passage is not None:
        params["null_passage"] = null_passage
    rcfg = from_dict(REALMConfig, params, where=f"{rc} objective.params")
    retriever = Retriever.load(index, query_encoder, temperature=rcfg.temperature)
    retriever.module.eval()
    # test time reads and never corrupts: plain token masking stands in for the run's (an entity dictionary is not
    # built for nothing)
    reading = MaskedLM(MLMConfig(mask_token_id=rcfg.mask_token_id, vocab_size=rcfg.vocab_size,
                                 special_token_ids=list(rcfg.special_token_ids)))
    return load_model(run / "model").eval(), tokenizer, REALM(rcfg, tokenizer, retriever, corruption=reading)
