"""Rollout generation: the jitted KV-cache sampler."""
