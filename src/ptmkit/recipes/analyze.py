"""`ptm analyze ANALYSIS MODEL --out DIR`: the understanding analyses of survey §7 on any ptmkit or Hugging Face model
directory, each writing DIR/results.json and DIR/<analysis>.png. The model is only read, never changed.

  lama       LAMA cloze probes of a masked LM, per relation (analysis.knowledge)
  attention  Clark et al.'s head statistics over sentences of a text file (analysis.attention)
  syntax     the best attention head for each UD dependency relation against a positional baseline
             (analysis.syntax, Clark et al. 2019 §4)
  perturbed  Perturbed Masking impact matrices decoded into dependency trees, UAS against right-branching
             (analysis.perturbed, Wu et al. 2020)
  probe      linear probes per layer on a CoNLL-U treebank's UPOS (or relation) labels or a CoNLL-2003 file's entity
             tags, with control tasks; optionally tested on another language's file (cross-lingual transfer)
             (analysis.probing)
  cka        linear CKA between the layers (and anisotropy per layer) on sentences of a text file
             (analysis.representations)
  attack     TextFooler word substitution or DeepWordBug character edits against a fine-tuned classifier on a
             task's split (analysis.robustness)
  heads      Michel et al.'s head importance on a task and the dev score as heads are removed, least important
             first (the compression package's head pruning)
  lottery    lottery tickets by iterative magnitude pruning with rewinding to the pre-trained weights, against
             random masks of the same sparsity (Chen et al. 2020), each a fine-tuning run
  defend     adversarial training data as a defence: the attack's successes on training texts added to the training
             set, the base model fine-tuned on it, and both models attacked on the same dev texts
  calibration  ECE and reliability diagram, temperature scaling fitted on half of the split, Monte Carlo dropout,
             and out-of-distribution detection (max softmax probability, AUROC) against another task's texts
             (analysis.calibration)
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit import atomic
from ptmkit.analysis import attention as attn
from ptmkit.analysis import knowledge, probing, representations
from ptmkit.config import ConfigError
from ptmkit.data import textio
from ptmkit.data.conllu import read_conllu
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.recipes.evaluate import load_adapted

ANALYSES = ("lama", "attention", "syntax", "perturbed", "probe", "cka", "attack", "defend", "calibration", "heads",
            "lottery")


def _write(out: Path, name: str, result: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    return result


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path, name: str, dpi: int = 120) -> None:
    """The analysis's plot as OUT/<name>.png."""
    fig.tight_layout()
    Path(out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(out) / f"{name}.png", dpi=dpi)
    plt.close(fig)


def _sentences(path: Path, tok: Tokenizer, limit: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Batches of up to 16 lines of a text file, tokenised with the model's specials."""
    lines = [x.strip() for x in textio.lines(path) if x.strip()][:limit]
    if not lines:
        raise ConfigError(f"{path}: no text lines")
    pad = tok.pad_id if tok.pad_id is not None else 0
    batches = []
    for i in range(0, len(lines), 16):
        enc = [tok.encode(x)[:max_length] for x in lines[i:i + 16]]
        t = max(len(e) for e in enc)
        ids = torch.full((len(enc), t), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), t), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, :len(e)], mask[r, :len(e)] = torch.tensor(e), 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def lama(model_dir: str | Path, out: str | Path, facts: list[str | Path], relations: str | Path | None = None,
         template: str | None = None, vocab_file: str | Path | None = None, batch_size: int = 64,
         mined: int = 0, optiprompt: int = 0, autoprompt: int = 0, seed: int = 0) -> dict[str, Any]:
    """Each relation file of `facts` (its id is the file name, P19.jsonl.gz -> P19), its template from `relations`
    (LAMA's relations.jsonl) or `template` (for relations LAMA never had); macro averages over relations. A masked
    LM fills the blank over its vocabulary; a causal LM ranks the relation's objects by their likelihood."""
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    known = knowledge.templates(relations) if relations else {}
    vocab = [w.strip() for w in textio.lines(Path(vocab_file)) if w.strip()] if vocab_file else None
    rows = {}
    for f in facts:
        rel = Path(f).name.split(".")[0]  # P19.jsonl.gz -> P19
        tpl = template or known.get(rel)
        items = knowledge.read_facts(f)
        if tpl is None and any(x.sentence is None for x in items):
            raise ConfigError(f"{f}: no template for relation {rel!r}; pass --relations relations.jsonl or --template "
                              "'[X] ... [Y] .'")
        if getattr(model, "task", None) == "causal-lm":  # rank the relation's objects by likelihood
            if tpl is None:
                raise ConfigError(f"{f}: a causal LM needs a template for {rel!r} (ready cloze sentences such as "
                                  "SQuAD's have their blank mid-sentence)")
            rows[rel] = knowledge.probe_causal_lm(model, tok, items, tpl, batch_size=batch_size,
                                                  progress=f"LAMA {rel}")
        else:
            rows[rel] = knowledge.probe_masked_lm(model, tok, items, tpl, vocab, batch_size)
            if mined or optiprompt or autoprompt:
                rows[rel]["prompt_search"] = _prompt_search(model, tok, f, items, tpl, vocab, batch_size, mined,
                                                            optiprompt, autoprompt, seed)
    scored = [r for r in rows.values() if r["p@1"] is not None]
    macro = {k: float(np.mean([r[k] for r in scored])) if scored else None for k in ("p@1", "p@10", "mrr")}
    result = {"analysis": "lama", "model": str(model_dir), "relations": rows, "macro": macro}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, len(rows) * 0.35), 3.5))
    names = [k for k in rows if rows[k]["p@1"] is not None]
    ax.bar(names, [rows[k]["p@1"] for k in names])
    ax.set_ylabel("P@1")
    ax.set_title(f"LAMA, {Path(model_dir).name}: mean P@1 {macro['p@1'] or 0:.3f}")
    ax.tick_params(axis="x", rotation=90)
    _save(plt, fig, out, "lama", 120)
    return _write(Path(out), "lama", result)


def _prompt_search(model, tok, path, items, template, vocab, batch_size, mined, optiprompt, autoprompt,
                   seed) -> dict:
    """Prompt search against the manual template on the same test half of the facts (the other half trains or
    selects): LPAQA's mined templates, the best of them picked on the training half and their ensemble (Jiang et al.
    2020), AutoPrompt's trigger tokens (Shin et al. 2020) and OptiPrompt's continuous prompt (Zhong et al. 2021)."""
    perm = np.random.default_rng(seed).permutation(len(items))
    train = [items[i] for i in perm[: len(items) // 2]]
    test = [items[i] for i in perm[len(items) // 2:]]
    out: dict[str, Any] = {"train_facts": len(train), "test_facts": len(test)}
    if template is not None:
        out["manual"] = knowledge.probe_masked_lm(model, tok, test, template, vocab, batch_size)
    if mined:
        found = knowledge.mine_templates(knowledge.read_evidence(path), top=mined)
        if found:
            scores = [knowledge.probe_masked_lm(model, tok, train, t, vocab, batch_size)["p@1"] or 0.0
                      for t, _ in found]
            best = found[int(np.argmax(scores))][0]
            out["mined"] = [t for t, _ in found]
            out["mined_top1"] = {"template": best, **knowledge.probe_masked_lm(model, tok, test, best, vocab,
                                                                              batch_size)}
            out["mined_ensemble"] = knowledge.probe_ensemble(model, tok, test, [t for t, _ in found], None, vocab,
                                                             batch_size)
    if autoprompt:
        try:
            triggers = knowledge.autoprompt(model, tok, train, n_triggers=autoprompt, seed=seed)
            out["autoprompt"] = knowledge.probe_triggers(model, tok, test, triggers, vocab, batch_size)
        except ConfigError as e:
            out["autoprompt"] = {"skipped": str(e)}
    if optiprompt:
        try:
            prompt = knowledge.train_optiprompt(model, tok, train, n=optiprompt, init_template=template, seed=seed)
            out["optiprompt"] = knowledge.probe_optiprompt(model, tok, test, prompt, vocab, batch_size)
        except ConfigError as e:  # e.g. no training fact with a single-token object in this vocabulary
            out["optiprompt"] = {"skipped": str(e)}
    return out


def attention(model_dir: str | Path, out: str | Path, text: str | Path, lines: int = 200,
              max_length: int = 128) -> dict[str, Any]:
    """Head statistics (Clark et al. 2019 §3) per layer and head, averaged over the lines' real tokens."""
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    classes = attn.TokenClasses.from_tokenizer(tok)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    with torch.no_grad():
        for batch in _sentences(Path(text), tok, lines, max_length):
            with attn.record_attention(model) as rec:
                model(batch["input_ids"], attention_mask=batch["attention_mask"])
            k = int(batch["attention_mask"].sum())
            for layer in range(rec.layers):
                stats = attn.head_statistics(rec.probs(layer), batch["input_ids"], batch["attention_mask"], classes)
                for name, v in stats.items():
                    sums.setdefault(name, torch.zeros(rec.layers, v.numel()))[layer] += v * k
            n += k
    stats = {name: (v / n).tolist() for name, v in sums.items()}  # layer x head, token-weighted
    plt = _plt()
    fig, axes = plt.subplots(1, len(stats), figsize=(3 * len(stats), 3))
    for ax, (name, v) in zip(axes, stats.items()):
        im = ax.imshow(np.array(v), aspect="auto", cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(plt, fig, out, "attention", 110)
    return _write(Path(out), "attention", {"analysis": "attention", "model": str(model_dir), "tokens": n,
                                           "statistics": stats})


PROBE_LABELS = ("upos", "deprel", "ner")  # UD part of speech and relation (CoNLL-U), CoNLL-2003 entity tag (IOB2)


def _labelled_sentences(path: str | Path, label: str, limit: int | None) -> tuple[list[list[str]], list[list[str]]]:
    """(words, labels) per sentence: a CoNLL-U treebank's UPOS or relation column, or a CoNLL-2003 file's entity tags
    spelled IOB2 (B- opens every entity, so files in IOB1 and IOB2 give the same labels)."""
    if label == "ner":
        from ptmkit.data.conll import read_conll

        try:
            data = read_conll(path, tag_scheme="iob2")
        except ValueError as e:
            raise ConfigError(f"probe --label ner reads CoNLL-2003 files (token ... NER-tag columns, blank line "
                              f"between sentences), e.g. <data root>/ner/conll2003/train.txt: {e}") from e
        words = data.sentences[:limit]
        return words, [[data.tag_names[t] for t in tags] for tags in data.tags[:limit]]
    try:
        sents = read_conllu(path)[:limit]
    except ValueError as e:
        raise ConfigError(f"probe --label {label} reads CoNLL-U treebanks (10 tab-separated columns); for "
                          f"CoNLL-2003 entity files use --label ner: {e}") from e
    return [s.words for s in sents], [getattr(s, label) for s in sents]


def probe(model_dir: str | Path, out: str | Path, train: str | Path, test: str | Path, label: str = "upos",
          transfer: str | Path | None = None, max_train: int | None = None, cfg: probing.ProbeConfig | None = None,
          cache: str | Path | None = None, max_test: int | None = None) -> dict[str, Any]:
    """Probe every layer for `label` trained on `train`, tested on `test` (and on `transfer`, another language's file
    with the same label set), with Hewitt & Liang's control task on the same words. `label` is upos or deprel (CoNLL-U
    treebanks) or ner (CoNLL-2003 files, IOB2 entity tags)."""
    if label not in PROBE_LABELS:
        raise ConfigError(f"probe: label must be one of {list(PROBE_LABELS)}, got {label!r}")
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    cfg = cfg or probing.ProbeConfig()

    def split(path, limit=None):
        words, labels = _labelled_sentences(path, label, limit)
        keep = probing.kept(tok, words)
        flat_words = [w[i] for w, k in zip(words, keep) for i in k]
        flat_labels = [lab[i] for lab, k in zip(labels, keep) for i in k]
        return probing.word_features(model, tok, words, cache=cache), flat_words, flat_labels

    train_x, train_w, train_l = split(train, max_train)
    test_x, test_w, test_l = split(test, max_test)
    if not train_l or not test_l:
        raise ConfigError(f"probe: no labelled words in {train if not train_l else test}")
    unseen = sorted(set(test_l) - set(train_l))
    if unseen:  # the probe cannot predict them: they count as errors, as for any classifier
        warnings.warn(f"probe: {test} has labels the training words never show ({unseen[:5]}); its words with them "
                      "count as errors", stacklevel=2)
    names = sorted(set(train_l) | set(test_l))
    index = {n: i for i, n in enumerate(names)}
    y_train = np.array([index[x] for x in train_l])
    y_test = np.array([index[x] for x in test_l])
    both = probing.control_labels(train_w + test_w, np.concatenate([y_train, y_test]), seed=cfg.seed)
    tx = y_tr = None
    if transfer is not None:
        tx, _, tl = split(transfer, max_test)
        known = [i for i, x in enumerate(tl) if x in index]  # labels the English treebank never shows cannot count
        tx, y_tr = tx[:, known], np.array([index[tl[i]] for i in known])
    curve = probing.layer_curve(train_x, y_train, test_x, y_test, len(names), cfg, both[:len(y_train)],
                                both[len(y_train):], transfer=None if tx is None else (tx, y_tr))
    # the accuracy of always answering the training words' most frequent label: an entity probe's floor is high
    # (most words are O), a part-of-speech probe's low
    majority = float(np.mean(y_test == np.bincount(y_train, minlength=len(names)).argmax()))
    result = {"analysis": "probe", "model": str(model_dir), "label": label, "labels": names,
              "train_words": len(y_train), "test_words": len(y_test), "majority_accuracy": majority, "curve": curve}
    if transfer is not None:  # the same probes, tested on the other treebank
        result["transfer"] = [{"layer": r["layer"], "accuracy": r.pop("transfer_accuracy")} for r in curve]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["layer"] for r in curve], [r["accuracy"] for r in curve], marker="o", label=f"{label} probe")
    ax.plot([r["layer"] for r in curve], [r["control_accuracy"] for r in curve], marker="x", label="control task")
    if "transfer" in result:
        ax.plot([r["layer"] for r in result["transfer"]], [r["accuracy"] for r in result["transfer"]], marker="s",
                label=f"transfer ({Path(transfer).name})")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(plt, fig, out, "probe", 120)
    return _write(Path(out), "probe", result)


def cka(model_dir: str | Path, out: str | Path, text: str | Path, other: str | Path | None = None,
        lines: int = 200, max_length: int = 128) -> dict[str, Any]:
    """Linear CKA between every pair of layers (or between this model's and `other`'s layers, same tokenizer), and
    each layer's anisotropy, on the real tokens of the lines."""
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    batches = _sentences(Path(text), tok, lines, max_length)
    a = representations.layer_vectors(model, batches)
    b = a
    if other is not None:
        if Tokenizer.load(other).backend.to_str() != tok.backend.to_str():
            raise ConfigError(f"cka: {other} has another tokenizer; CKA compares the same tokens' vectors")
        b = representations.layer_vectors(load_adapted(other).eval(), batches)
    m = representations.cka_matrix(a, b)
    result = {"analysis": "cka", "model": str(model_dir), "other": str(other) if other else None,
              "tokens": int(a[0].shape[0]), "cka": m.tolist(),
              "anisotropy": [representations.anisotropy(x) for x in a]}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="magma", origin="lower")
    ax.set_xlabel(f"layer of {Path(other).name if other else Path(model_dir).name}")
    ax.set_ylabel(f"layer of {Path(model_dir).name}")
    fig.colorbar(im, ax=ax)
    _save(plt, fig, out, "cka", 120)
    return _write(Path(out), "cka", result)


def attack(model_dir: str | Path, out: str | Path, task: str | None = None, data_dir: str | Path | None = None,
           split: str = "dev", kind: str = "word", synonyms: str | Path | None = None,
           treebank: str | Path | None = None, encoder: str | Path | None = None, max_examples: int = 200,
           cfg: Any = None, seed: int = 0) -> dict[str, Any]:
    """Attack MODEL (a fine-tuned sequence classifier) on `max_examples` texts of the split; summary and examples."""
    from ptmkit.analysis import robustness
    from ptmkit.analysis.sts import encode_sentences
    from ptmkit.data.task_data import TaskSpec, _subset, _take, canonical_task, load_split
    from ptmkit.recipes.evaluate import TASK_FILE

    if kind not in ("word", "char"):
        raise ConfigError(f"attack: kind must be 'word' (TextFooler) or 'char' (DeepWordBug), got {kind!r}")
    info = json.loads((Path(model_dir) / TASK_FILE).read_text()) if (Path(model_dir) / TASK_FILE).is_file() else {}
    task = canonical_task(task or info.get("task") or "")
    spec = TaskSpec(task, data_dir)
    if spec.is_regression or spec.is_token:
        raise ConfigError(f"attack: {task} is not single-text classification (a regression or tagging task has no "
                          "label to flip)")
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    names = getattr(model, "label_names", None)
    data, _ = load_split(spec, split, label_names=names)
    data = _take(data, _subset(len(data), max_examples, seed))
    victim = robustness.Victim(model, tok, max_length=info.get("max_length") or 128)
    cfg = cfg or robustness.AttackConfig(seed=seed)
    results = []
    if kind == "word":
        from ptmkit.data.conllu import read_conllu

        syn = robustness.load_synonyms(synonyms) if synonyms else {}
        pos = robustness.pos_lexicon(read_conllu(treebank)) if treebank else None
        enc = None
        if encoder is not None:
            enc_model, enc_tok = load_adapted(encoder).eval(), Tokenizer.load(encoder)
            enc = lambda texts: encode_sentences(enc_model, enc_tok, texts)  # noqa: E731
        for e in data.examples:
            results.append(robustness.textfooler(victim, e.text_a, e.label, syn, cfg, pos, enc))
    else:
        for e in data.examples:
            results.append(robustness.char_attack(victim, e.text_a, e.label, cfg))
    summary = robustness.summarise(results)
    examples = [{"original": r.original, "adversarial": r.adversarial, "changes": r.changes}
                for r in results if r.success][:20]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["before", "after"], [summary["accuracy_before"], summary["accuracy_after"]], color=["tab:blue", "tab:red"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{kind} attack: success {summary['success_rate']:.0%}")
    _save(plt, fig, out, "attack", 120)
    return _write(Path(out), "attack", {"analysis": "attack", "model": str(model_dir), "task": task, "split": split,
                                        "kind": kind, **summary, "examples": examples})


@torch.no_grad()
def _split_logits(model, tok, task: str, data_dir, split: str, max_length: int, max_examples: int | None,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C) logits of a sequence classifier on a task split (a seeded subset), and the labels (None if unlabelled).
    The model's dropout modes are left as they are (Monte Carlo dropout keeps them on)."""
    from ptmkit.data.encode import collate, prepare_backend, sorted_batches
    from ptmkit.data.task_data import TaskSpec, _subset, _take, encode_split, load_split
    from ptmkit.objectives.classification import task_logits

    spec = TaskSpec(task, data_dir)
    data, path = load_split(spec, split, label_names=getattr(model, "label_names", None), allow_unlabelled=True)
    data = _take(data, _subset(len(data), max_examples, seed))
    enc = encode_split(spec, prepare_backend(tok), data, max_length, "truncate", path)
    pad = tok.pad_id if tok.pad_id is not None else 0
    out = torch.zeros(len(enc), model.num_labels)
    for idx in sorted_batches(enc.lengths, 64):
        batch = collate(enc, idx, pad)
        out[torch.from_numpy(idx)] = task_logits(model, batch).float()
    labels = None if enc.labels is None else torch.as_tensor(np.asarray(enc.labels), dtype=torch.long)
    return out, labels


def calibration(model_dir: str | Path, out: str | Path, task: str | None = None, data_dir: str | Path | None = None,
                split: str = "dev", ood_task: str | None = None, ood_data_dir: str | Path | None = None,
                ood_split: str = "dev", passes: int = 10, dropout: float = 0.1, max_examples: int | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Calibration of a fine-tuned classifier on a split: the temperature is fitted on one seeded half and every
    figure reported on the other; MC dropout with `passes` samples at `dropout`; with `ood_task`, the AUROC of telling
    the split's texts from that task's by the maximum softmax probability."""
    from ptmkit.analysis import calibration as cal
    from ptmkit.data.task_data import canonical_task
    from ptmkit.models import load_model
    from ptmkit.recipes.evaluate import TASK_FILE

    info = json.loads((Path(model_dir) / TASK_FILE).read_text()) if (Path(model_dir) / TASK_FILE).is_file() else {}
    task = canonical_task(task or info.get("task") or "")
    max_length = info.get("max_length") or 128
    model, tok = load_model(model_dir, dropout=dropout).eval(), Tokenizer.load(model_dir)
    if getattr(model, "task", None) != "sequence-classification" or model.num_labels < 2:
        raise ConfigError(f"calibration needs a sequence classifier with classes; {model_dir} is "
                          f"{getattr(model, 'task', None)} with {getattr(model, 'num_labels', None)} output(s)")
    logits, labels = _split_logits(model, tok, task, data_dir, split, max_length, max_examples, seed)
    if labels is None:
        raise ConfigError(f"calibration: the {split!r} split of {task} has no labels; use a labelled split (dev)")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit, test = perm[: len(perm) // 2], perm[len(perm) // 2:]
    t = cal.fit_temperature(logits[fit], labels[fit])
    before = cal.reliability(logits[test].softmax(-1), labels[test])
    after = cal.reliability((logits[test] / t).softmax(-1), labels[test])
    mc = cal.mc_dropout(lambda: _split_logits(model, tok, task, data_dir, split, max_length, max_examples, seed)[0],
                        model, passes, seed=seed)
    mc_rel = cal.reliability(mc[test], labels[test])
    result = {"analysis": "calibration", "model": str(model_dir), "task": task, "split": split,
              "examples": int(len(test)), "temperature": t, "plain": before, "temperature_scaled": after,
              "mc_dropout": {**mc_rel, "passes": passes, "dropout": dropout}}
    if ood_task is not None:
        ood_logits, _ = _split_logits(model, tok, canonical_task(ood_task), ood_data_dir, ood_split, max_length,
                                      max_examples, seed)
        result["ood"] = {"task": ood_task, "examples": int(len(ood_logits)),
                         "auroc_msp": cal.auroc(cal.max_softmax(logits), cal.max_softmax(ood_logits)),
                         "auroc_msp_temperature": cal.auroc(cal.max_softmax(logits / t),
                                                            cal.max_softmax(ood_logits / t))}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, r in (("plain", before), (f"T = {t:.2f}", after), ("MC dropout", mc_rel)):
        b = r["bins"]
        xs = [lo + 1 / (2 * len(b["lower"])) for lo, c in zip(b["lower"], b["count"]) if c]
        ys = [a for a, c in zip(b["accuracy"], b["count"]) if c]
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {r['ece']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    _save(plt, fig, out, "calibration", 120)
    return _write(Path(out), "calibration", result)


def syntax(model_dir: str | Path, out: str | Path, treebank: str | Path, max_sentences: int = 500,
           min_count: int = 20, max_length: int = 128) -> dict[str, Any]:
    """For each dependency relation of the treebank, the accuracy of the best (layer, head) at attending from a
    word to its syntactic head, and of the best fixed offset (Clark et al. 2019 §4.2, Table 1)."""
    from ptmkit.analysis.syntax import HeadSyntax, word_attention
    from ptmkit.data.encode import prepare_backend

    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    backend = prepare_backend(tok)
    counts = HeadSyntax()
    with torch.no_grad():
        for s in read_conllu(treebank)[:max_sentences]:
            enc = backend.encode(s.words, is_pretokenized=True)
            if len(enc.ids) > max_length:
                continue  # a cut sentence would lose words and their heads
            with attn.record_attention(model) as rec:
                model(torch.tensor([enc.ids]))
            att = [word_attention(rec.probs(layer)[0], enc.word_ids) for layer in range(rec.layers)]
            counts.add(att, s.heads, s.deprels)
    table = counts.table(min_count)
    if not table:
        raise ConfigError(f"syntax: no relation of {treebank} occurs {min_count} times in {max_sentences} sentences; "
                          "lower min_count or use more sentences")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(table)), 3.5))
    rels = list(table)
    x = np.arange(len(rels))
    ax.bar(x - 0.2, [table[r]["best_head_accuracy"] for r in rels], 0.4, label="best head")
    ax.bar(x + 0.2, [table[r]["baseline_accuracy"] for r in rels], 0.4, label="best fixed offset")
    ax.set_xticks(x, rels, rotation=90)
    ax.set_ylabel("accuracy")
    ax.legend()
    _save(plt, fig, out, "syntax", 120)
    return _write(Path(out), "syntax", {"analysis": "syntax", "model": str(model_dir), "treebank": str(treebank),
                                        "relations": table})


def perturbed(model_dir: str | Path, out: str | Path, treebank: str | Path, max_sentences: int = 100,
              max_words: int = 30, layer: int = -1) -> dict[str, Any]:
    """Wu et al. 2020: impact matrices of the treebank's sentences (up to `max_words` words) at `layer`, decoded with
    Eisner's algorithm; unlabelled attachment score (punctuation left out) with the root predicted from the impacts,
    with the gold root (as Wu et al.'s released decoder), and of the right-branching baseline."""
    from ptmkit.analysis.perturbed import impact_matrix, right_branching, tree_from_impacts, uas
    from ptmkit.data.encode import prepare_backend

    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    if tok.mask_id is None:
        raise ConfigError(f"perturbed masking masks words: {model_dir}'s tokenizer has no mask token")
    backend = prepare_backend(tok)
    hits = gold_hits = base_hits = total = sentences = 0
    example = None
    for s in read_conllu(treebank):
        if sentences >= max_sentences:
            break
        if len(s.words) > max_words or len(s.words) < 2 or any(h < 0 for h in s.heads):
            continue
        enc = backend.encode(s.words, is_pretokenized=True)
        f = impact_matrix(model, enc.ids, enc.word_ids, tok.mask_id, layer)
        pred = tree_from_impacts(f)
        punct = [p == "PUNCT" for p in s.upos]
        h, n = uas(pred, s.heads, punct)
        hg, _ = uas(tree_from_impacts(f, root=s.heads.index(0)), s.heads, punct)
        hb, _ = uas(right_branching(len(s.words)), s.heads, punct)
        hits, gold_hits, base_hits = hits + h, gold_hits + hg, base_hits + hb
        total, sentences = total + n, sentences + 1
        if example is None:
            example = {"words": s.words, "impact": f.round(4).tolist(), "predicted": [int(x) for x in pred],
                       "gold": s.heads}
    if not total:
        raise ConfigError(f"perturbed: no sentence of {treebank} with 2 to {max_words} words and full syntax")
    result = {"analysis": "perturbed", "model": str(model_dir), "treebank": str(treebank), "layer": layer,
              "sentences": sentences, "words": total, "uas": hits / total, "uas_gold_root": gold_hits / total,
              "right_branching_uas": base_hits / total,
              "example": example}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(np.array(example["impact"]), cmap="Blues")
    ax.set_xticks(range(len(example["words"])), example["words"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(example["words"])), example["words"], fontsize=7)
    ax.set_title(f"impact f(i, j); UAS {hits / total:.3f} vs {base_hits / total:.3f}")
    fig.colorbar(im, ax=ax)
    _save(plt, fig, out, "perturbed", 120)
    return _write(Path(out), "perturbed", result)


def heads(model_dir: str | Path, out: str | Path, task: str | None = None, data_dir: str | Path | None = None,
          fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), data_batches: int = 8,
          max_eval_examples: int | None = None) -> dict[str, Any]:
    """Structural sparsity (Michel et al. 2019): every head's importance for the task's loss (a layer x head map) and
    the dev score after removing each fraction of the heads, least important first (each fraction from the full
    model, one shot). The model directory is only read; the pruned copies live in memory."""
    import copy

    from ptmkit.compress.prune.heads import head_importance
    from ptmkit.data.task_data import TaskSpec, canonical_task
    from ptmkit.objectives.classification import TaskConfig, TaskObjective
    from ptmkit.recipes.compress import CompressConfig, _batches, _task_of, apply_method
    from ptmkit.recipes.evaluate import evaluate
    from ptmkit.models import save_model

    cfg = CompressConfig(model=str(model_dir), out=str(out), method="heads", method_options={"fraction": 0.1},
                         task=task, data_dir=str(data_dir) if data_dir else None, data_batches=data_batches)
    task, info = _task_of(cfg)
    if task is None:
        raise ConfigError("heads: head importance is measured on a task's loss; give --task (or a fine-tuned model "
                          "that records its task)")
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    batches = _batches(cfg, task, info, tok)
    objective = TaskObjective(TaskConfig("regression" if TaskSpec(canonical_task(task), data_dir).is_regression
                                         else "classification"))
    loss_fn = lambda m, b: objective.loss(m, b)[0]  # noqa: E731
    imp = head_importance(model, loss_fn, batches)
    importance = [v.tolist() for v in imp.values()]

    def score(m) -> dict[str, float]:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            save_model(m, d, tokenizer_from=model_dir)
            if (Path(model_dir) / "finetune_task.json").is_file():
                (Path(d) / "finetune_task.json").write_text((Path(model_dir) / "finetune_task.json").read_text())
            return evaluate(d, task, data_dir, "dev", precision="fp32", device="cpu",
                            max_examples=max_eval_examples, show_progress=False)["metrics"]

    curve = [{"fraction": 0.0, **score(model)}]
    for f in fractions:
        pruned, _ = apply_method(copy.deepcopy(model), "heads", {"fraction": f}, batches, loss_fn)
        curve.append({"fraction": f, **score(pruned)})
    metric = next(iter(curve[0]))
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    im = a1.imshow(np.array(importance), aspect="auto", cmap="viridis")
    a1.set_xlabel("head")
    a1.set_ylabel("layer")
    a1.set_title("head importance")
    fig.colorbar(im, ax=a1)
    a2.plot([c["fraction"] * 100 for c in curve], [c[metric] for c in curve], marker="o")
    a2.set_xlabel("% of heads removed")
    a2.set_ylabel(metric)
    a2.grid(alpha=0.3)
    _save(plt, fig, out, "heads", 120)
    return _write(Path(out), "heads", {"analysis": "heads", "model": str(model_dir), "task": task,
                                       "importance": importance, "curve": curve})


def lottery(model_dir: str | Path, out: str | Path, task: str, rounds: int = 5, prune_per_round: float = 0.2,
            data_dir: str | Path | None = None, finetune_options: dict[str, Any] | None = None,
            random_baseline: bool = True) -> dict[str, Any]:
    """Chen et al. 2020 §3: fine-tune the pre-trained MODEL; prune `prune_per_round` of the remaining weights of the
    blocks by global magnitude of the fine-tuned weights; rewind the rest to the pre-trained values and fine-tune
    again (the mask fixed); repeat `rounds` times. Each sparsity is compared with a random mask of that sparsity,
    fine-tuned the same way. Every run is a `ptm finetune` run in OUT (resumable: finished runs are reused)."""
    from ptmkit.compress.prune import unstructured
    from ptmkit.compress.prune.ticket import save_masks
    from ptmkit.models import load_model
    from ptmkit.recipes.finetune import FinetuneConfig, finetune

    if rounds < 1 or not 0 < prune_per_round < 1:
        raise ConfigError(f"lottery: rounds >= 1 and 0 < prune_per_round < 1, got {rounds}, {prune_per_round}")
    out = Path(out)
    opts = dict(finetune_options or {})

    def run(name: str, **kw) -> dict:
        d = out / name
        if not (d / "results.json").exists():
            finetune(FinetuneConfig(model=str(model_dir), task=task, out=str(d),
                                    data_dir=str(data_dir) if data_dir else None, overwrite=True,
                                    show_progress=False, **opts, **kw))
        return json.loads((d / "results.json").read_text())

    metric = None
    curve = []
    res = run("dense")
    metric = res["main_metric"]
    curve.append({"sparsity": 0.0, "ticket": res["final"][metric], "random": res["final"][metric]})
    previous = out / "dense" / "best"
    for k in range(1, rounds + 1):
        sparsity = round(1 - (1 - prune_per_round) ** k, 4)
        masks = out / f"masks-{k}.safetensors"
        if not masks.exists():  # the smallest weights of the last fine-tuned model (its pruned ones are zero)
            tuned = load_model(previous)
            unstructured.prune(tuned, "magnitude", {"sparsity": sparsity, "scope": "global"})
            save_masks(tuned, masks)
        ticket = run(f"ticket-{k}", compress="ticket", compress_options={"path": str(masks)})
        row = {"sparsity": sparsity, "ticket": ticket["final"][metric]}
        if random_baseline:
            rnd = run(f"random-{k}", compress="random-mask", compress_options={"sparsity": sparsity, "seed": k})
            row["random"] = rnd["final"][metric]
        curve.append(row)
        previous = out / f"ticket-{k}" / "best"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["sparsity"] * 100 for r in curve]
    ax.plot(xs, [r["ticket"] for r in curve], marker="o", label="IMP ticket (rewound)")
    if random_baseline:
        ax.plot(xs, [r["random"] for r in curve], marker="x", label="random mask")
    ax.set_xlabel("sparsity of the blocks' weights (%)")
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(plt, fig, out, "lottery", 120)
    return _write(out, "lottery", {"analysis": "lottery", "model": str(model_dir), "task": task, "metric": metric,
                                   "curve": curve})


def defend(model_dir: str | Path, base_model: str | Path, out: str | Path, task: str | None = None,
           data_dir: str | Path | None = None, attack_train: int = 200, attack_dev: int = 200,
           synonyms: str | Path | None = None, treebank: str | Path | None = None, encoder: str | Path | None = None,
           finetune_options: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Adversarial data augmentation (Jin et al. 2020 §5; the survey's robustness section): attack `attack_train`
    training texts with MODEL (fine-tuned), add every successful adversarial text with its true label to the training
    set, fine-tune `base_model` on the augmented set (a table task in OUT/data), and attack both models on the same
    `attack_dev` dev texts. Returns both attacks' summaries and the defended model's dev score."""
    import csv

    from ptmkit.analysis import robustness
    from ptmkit.analysis.sts import encode_sentences
    from ptmkit.data.conllu import read_conllu
    from ptmkit.data.task_data import TaskSpec, _subset, _take, canonical_task, load_split
    from ptmkit.recipes.evaluate import TASK_FILE
    from ptmkit.recipes.finetune import FinetuneConfig, finetune

    out = Path(out)
    info = json.loads((Path(model_dir) / TASK_FILE).read_text()) if (Path(model_dir) / TASK_FILE).is_file() else {}
    task = canonical_task(task or info.get("task") or "")
    spec = TaskSpec(task, data_dir)
    if spec.is_regression or spec.is_token:
        raise ConfigError(f"defend: {task} is not classification (a regression or tagging task has no label to flip)")
    model, tok = load_adapted(model_dir).eval(), Tokenizer.load(model_dir)
    names = getattr(model, "label_names", None)
    train, _ = load_split(spec, "train", label_names=names)
    dev, _ = load_split(spec, "dev", label_names=train.label_names)
    if any(e.text_b for e in train.examples[:100]):
        raise ConfigError(f"defend: {task} pairs two texts; the word attack changes single texts (SST-2, CoLA, ...)")
    syn = robustness.load_synonyms(synonyms) if synonyms else {}
    pos = robustness.pos_lexicon(read_conllu(treebank)) if treebank else None
    enc = None
    if encoder is not None:
        enc_model, enc_tok = load_adapted(encoder).eval(), Tokenizer.load(encoder)
        enc = lambda texts: encode_sentences(enc_model, enc_tok, texts)  # noqa: E731
    cfg = robustness.AttackConfig(seed=seed)

    def attack_all(victim_model, examples):
        victim = robustness.Victim(victim_model, tok, max_length=info.get("max_length") or 128)
        return [robustness.textfooler(victim, e.text_a, e.label, syn, cfg, pos, enc) for e in examples]

    picked = _take(train, _subset(len(train), attack_train, seed)).examples
    adversarial = [(r.adversarial, r.label) for r in attack_all(model, picked) if r.success]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    label_names = list(train.label_names)
    for split, rows in (("train", [(e.text_a, e.label) for e in train.examples] + adversarial),
                        ("dev", [(e.text_a, e.label) for e in dev.examples])):
        with open(data / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(["text", "label"])
            w.writerows((t.replace("\t", " "), label_names[y]) for t, y in rows)
    run = out / "defended"
    if not (run / "results.json").exists():
        # the caller's options win over these defaults (e.g. its own max_length)
        options = {"max_length": info.get("max_length") or 128, "seed": seed, **(finetune_options or {})}
        finetune(FinetuneConfig(model=str(base_model), task="table", data_dir=str(data), text_fields=["text"],
                                label_field="label", out=str(run), overwrite=True, show_progress=False, **options))
    defended = load_adapted(run / "best").eval()
    dev_pick = _take(dev, _subset(len(dev), attack_dev, seed + 1)).examples
    before = robustness.summarise(attack_all(model, dev_pick))
    # the defended model's class ids come from the table's label names: map the dev labels into them
    order = list(getattr(defended, "label_names", label_names))
    remapped = [dataclasses.replace(e, label=order.index(label_names[e.label])) for e in dev_pick]
    after = robustness.summarise(attack_all(defended, remapped))
    result = {"analysis": "defend", "model": str(model_dir), "base_model": str(base_model), "task": task,
              "adversarial_training_examples": len(adversarial), "attacked_training_texts": len(picked),
              "original": before, "defended": after,
              "defended_dev": json.loads((run / "results.json").read_text())["final"]}
    return _write(out, "defend", result)
