"""Algorithm factories (registered by name on import) and the registry."""

from jaxrl_llm.algorithms import (  # noqa: F401  (registers the factories)
    aux_dpo,
    calibration,
    clipping,
    constrained,
    dapo,
    discriminative,
    distill,
    dpo,
    grpo,
    gspo,
    kto,
    mah_dpo,
    multi_label,
    online,
    ppo,
    reinforce,
    reward_model,
    sft,
    srpo,
)
from jaxrl_llm.algorithms.registry import get_factory, make_algorithm, register, registered_algorithms

__all__ = ["get_factory", "make_algorithm", "register", "registered_algorithms"]
