"""The bulkhead plugin (under construction: registers no hooks yet)."""
