"""Data: tokenization, prompt datasets and batching."""
