"""The NCM job\x27s benchmark and memory measurements."""
