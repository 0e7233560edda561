"""Training loop, checkpointing, metrics and plots."""
