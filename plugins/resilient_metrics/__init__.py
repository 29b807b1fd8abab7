"""The metrics plugin (under construction: registers no hooks yet)."""
