"""The timeout plugin (under construction: registers no hooks yet)."""
