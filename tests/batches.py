"""A batch source for tests that drive the training engine: cycles through a fixed list and resumes where it was
(the engine's sampler protocol: __next__, state_dict, load_state_dict)."""

from __future__ import annotations


class ListBatches:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __next__(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]
