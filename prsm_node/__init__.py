"""PRSM node: the daemon (the only package here that does I/O)."""

__version__ = "0.1.0"
