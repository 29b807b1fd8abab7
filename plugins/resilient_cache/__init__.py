"""The cache plugin (under construction: registers no hooks yet)."""
