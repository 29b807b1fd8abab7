"""The audit plugin (under construction: registers no hooks yet)."""
