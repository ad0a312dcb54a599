"""minimind: a lab assistant for memory-layer language-model research (foundation package)."""

__version__ = "0.1.0"
