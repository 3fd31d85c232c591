"""behaviors package."""
