"""What the task readers return: text (pair) examples with label ids (GLUE, tables) and tagged sentences
(CoNLL), plus what a head needs to know about the labels."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Example:
    """One text or text pair; ``label`` is a class id, a float score, or None when unlabelled."""

    text_a: str
    text_b: str | None = None
    label: int | float | None = None


@dataclass
class TaskData:
    """Examples of one split plus what a head needs to know about the labels."""

    examples: list[Example]
    label_names: list[str] | None  # class id -> name; None for regression
    is_regression: bool
    text_fields: tuple[str, ...]  # the source columns of text_a (and text_b)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each skipped row

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_labels(self) -> int:
        """Output size of a head: 1 for regression, else the number of classes."""
        return 1 if self.is_regression else len(self.label_names or ())

    @property
    def has_labels(self) -> bool:
        return bool(self.examples) and all(e.label is not None for e in self.examples)


@dataclass
class TokenTaskData:
    """Sentences of tokens with one tag id per token (``tag_names[id]`` is the tag string)."""

    sentences: list[list[str]]
    tags: list[list[int]]
    tag_names: list[str]
    tag_scheme: str = "iob2"  # the scheme of the returned tags: "iob1" or "iob2"

    def __len__(self) -> int:
        return len(self.sentences)

    def tag_strings(self, i: int) -> list[str]:
        """The tags of sentence ``i`` as strings."""
        return [self.tag_names[t] for t in self.tags[i]]
