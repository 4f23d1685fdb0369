"""NEAT: Negative-prompt-driven AlignmenT of language models (arXiv 2410.12194)."""

__version__ = "0.1.0"
