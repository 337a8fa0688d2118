"""ptmkit: pre-trained Transformer models end to end (build, pre-train, adapt, compress, analyse)."""

__version__ = "0.1.0"
