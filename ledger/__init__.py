"""Promotion Ledger: scheduled LLM behaviors that earn their autonomy."""

__version__ = "0.1.0"
