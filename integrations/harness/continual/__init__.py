"""The continual-learning job\x27s streams, checkpoints and runs."""
