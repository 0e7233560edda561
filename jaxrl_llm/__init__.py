"""jaxrl_llm: JAX-native reinforcement learning and preference optimisation of language models."""
