"""Algorithm factories (registered by name on import) and the registry."""

from jaxrl_llm.algorithms import clipping, dapo, discriminative, distill, dpo, grpo, gspo, ppo, reinforce, sft  # noqa: F401  (registers the factories)
from jaxrl_llm.algorithms.registry import get_factory, make_algorithm, register, registered_algorithms

__all__ = ["get_factory", "make_algorithm", "register", "registered_algorithms"]
