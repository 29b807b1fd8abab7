"""The fallback plugin (under construction: registers no hooks yet)."""
