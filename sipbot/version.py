"""sipbot's version (one place; ``sipbot.__version__`` re-exports it)."""

__version__ = "0.1.0"
