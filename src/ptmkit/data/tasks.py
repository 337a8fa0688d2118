"""Task readers for fine-tuning, in one place: GLUE in its standard layouts (data/glue.py), CoNLL-2003 NER
(data/conll.py) and users' own CSV/TSV/JSONL tables (data/tables.py). They return plain examples with integer
label ids (data/examples.py); TASK_METRICS names the metrics of each task and available_tasks() describes them."""

from __future__ import annotations

from ptmkit.data.conll import CONLL_METRICS, read_conll
from ptmkit.data.examples import Example, TaskData, TokenTaskData
from ptmkit.data.glue import GLUE_TASKS, GlueTaskSpec, glue_file, glue_task, read_glue
from ptmkit.data.tables import read_table

__all__ = [
    "GLUE_TASKS", "TASK_METRICS", "Example", "GlueTaskSpec", "TaskData", "TokenTaskData", "available_tasks",
    "glue_file", "glue_task", "read_conll", "read_glue", "read_table",
]

# task -> metric names (ptmkit.analysis.metrics.METRICS keys); GLUE's come from the specs
TASK_METRICS: dict[str, list[str]] = {
    **{key: list(spec.metrics) for key, spec in GLUE_TASKS.items()},
    "conll2003": list(CONLL_METRICS),
}


def available_tasks() -> dict[str, str]:
    """Every task with a reader: name -> one line saying how to read it and how it is scored."""
    out = {}
    for key, spec in GLUE_TASKS.items():
        kind = "regression" if spec.is_regression else f"labels {spec.labels_text()}"
        pair = "pair" if spec.text_b else "single sentence"
        out[key] = (
            f"GLUE {spec.name}: {spec.description}; {pair}, {kind}; metrics {list(spec.metrics)}; "
            f"read_glue({key!r}, data_dir, split) with split in {list(spec.splits)}"
        )
    out["conll2003"] = (
        "CoNLL-2003 NER (PER, LOC, ORG, MISC): `token POS chunk NER` lines; metrics "
        f"{list(CONLL_METRICS)}; read_conll(path, tag_scheme='auto'|'iob1'|'iob2')"
    )
    return out
