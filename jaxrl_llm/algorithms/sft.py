"""Supervised fine-tuning: token-mean negative log-likelihood of dataset targets. Used as the
warm-start phase before RL, through the same trainer and update step as every algorithm."""

from __future__ import annotations

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.objectives import nll
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm


@register("sft")
def sft(loss_agg: str = "token_mean") -> Algorithm:
    """NLL = -sum_t m_t log pi(y_t | x, y_<t) / sum m (token_mean; any `aggregate` mode)."""
    return Algorithm(data="supervised", transform=identity(), objective=nll(1.0, loss_agg))
