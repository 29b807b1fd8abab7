"""The routing plugin (under construction: registers no hooks yet)."""
