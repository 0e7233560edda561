"""Transformer models (policy, value, reward heads) and Hugging Face interop."""
