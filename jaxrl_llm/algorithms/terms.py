"""The pass tuple that goes with the objective terms of `jaxrl_llm.objectives`."""

from __future__ import annotations

from jaxrl_llm.train.passes import reference_pass
from jaxrl_llm.transforms.base import is_static_zero


def reference_passes(beta) -> tuple:
    """(reference_pass(),) unless beta is a static 0 (no KL term: no reference forward)."""
    return () if is_static_zero(beta) else (reference_pass(),)
