"""Templates and verbalizers: classification recast as filling a slot with a label word.

Schick & Schütze 2021 (PET) and Gao et al. 2021 (LM-BFF): an input is wrapped in a template with one slot,
"{text_a} It was {mask}.", and each class has a label word ("terrible", "great") scored at the slot — by a masked
LM at its [MASK] position, or by a causal LM as the next token after the text before the slot (GPT-3's prompting,
Brown et al. 2020). Fields: {text_a}, {text_b} (the task's two text columns) and {mask} (the slot, once).

A label word must be a single token of the model's tokenizer (else the class score would need several positions);
for a causal LM the slot ends the template, and the space before it belongs to the word (" great" is one GPT-2 /
SmolLM2 token, "great" after a space is not what the model saw in training).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ptmkit.config import ConfigError

FIELDS = ("text_a", "text_b", "mask")
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Template:
    text: str  # e.g. "{text_a} It was {mask}." or "Premise: {text_a}\nHypothesis: {text_b}\nAnswer: {mask}"

    def __post_init__(self) -> None:
        names = _FIELD.findall(self.text)
        unknown = sorted(set(names) - set(FIELDS))
        if unknown:
            raise ConfigError(f"template {self.text!r}: unknown field(s) {unknown}; use {{text_a}}, {{text_b}} and "
                              "{mask}")
        if names.count("mask") != 1:
            raise ConfigError(f"template {self.text!r} must hold the slot {{mask}} exactly once (found "
                              f"{names.count('mask')}), e.g. \"{{text_a}} It was {{mask}}.\"")
        if "text_a" not in names:
            raise ConfigError(f"template {self.text!r} has no {{text_a}}: where does the input go?")

    @property
    def pair(self) -> bool:
        return "{text_b}" in self.text

    def fill(self, text_a: str, text_b: str | None = None, mask: str = "{mask}") -> str:
        if self.pair and text_b is None:
            raise ConfigError(f"template {self.text!r} uses {{text_b}} but the task has one text column")
        return self.text.replace("{text_a}", text_a).replace("{text_b}", text_b or "").replace("{mask}", mask)

    @property
    def space_before_slot(self) -> str:
        """" " when the template has a space right before the slot: it belongs to the label word, which a byte-level
        BPE (GPT-2, RoBERTa, SmolLM2) encodes as " great", not "great" (LM-BFF's label words carry it too)."""
        return " " if self.text.partition("{mask}")[0].endswith(" ") else ""

    def before_slot(self, text_a: str, text_b: str | None = None) -> tuple[str, str]:
        """(text before the slot without its trailing space, the space that goes with the label word) — for causal
        LMs, which read the label word as the next token. The slot must end the template (up to punctuation)."""
        head, _, tail = self.fill(text_a, text_b).partition("{mask}")
        if tail.strip(" .!?\"'"):
            raise ConfigError(f"template {self.text!r}: for a causal LM the slot {{mask}} must end the template (the "
                              "label word is the next token); move the text after it before")
        space = " " if head.endswith(" ") else ""
        return head[: len(head) - len(space)], space


class Verbalizer:
    """One label word per class (in the task's label order), each a single token of `tokenizer`."""

    def __init__(self, words: list[str], tokenizer, space: str = "", names: list[str] | None = None):
        if names is not None and len(words) != len(names):
            raise ConfigError(f"verbalizer: {len(words)} label words {words} for {len(names)} classes {names}; give "
                              "one word per class, in that order")
        if len(set(words)) != len(words):
            raise ConfigError(f"verbalizer: label words must differ, got {words}")
        self.words = list(words)
        self.ids = []
        for w in words:
            ids = tokenizer.encode(space + w, add_special_tokens=False)
            if len(ids) != 1:
                pieces = [tokenizer.id_to_token(i) for i in ids]
                raise ConfigError(f"verbalizer: label word {w!r} is {len(ids)} tokens {pieces} for this tokenizer, "
                                  "not one; choose a word the tokenizer keeps whole (a common word), so its score is "
                                  "one position's")
            self.ids.append(ids[0])


def parse_words(text: str | list[str]) -> list[str]:
    """"terrible,great" or ["terrible", "great"] -> ["terrible", "great"]."""
    words = [w.strip() for w in text.split(",")] if isinstance(text, str) else [str(w).strip() for w in text]
    if not words or any(not w for w in words):
        raise ConfigError(f"verbalizer: give one non-empty label word per class, comma-separated (got {text!r})")
    return words
