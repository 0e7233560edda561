"""Losses: pure functions of arrays (policy surrogates, KL estimators, value, preference, aggregation)."""

from jaxrl_llm.losses.aggregation import AGGREGATION_MODES, aggregate
from jaxrl_llm.losses.policy import (
    KL_ESTIMATORS,
    entropy_from_logits,
    kl_estimate,
    logprobs_and_entropy,
    ppo_clip_loss,
    token_logprobs_from_logits,
)
from jaxrl_llm.losses.preference import (
    PREFERENCE_LINKS,
    SEQUENCE_REDUCTIONS,
    dpo_loss,
    kto_kl_anchor,
    kto_loss,
    log_odds,
    preference_link,
    sequence_logps,
)
from jaxrl_llm.losses.value import clipped_value_loss

__all__ = [
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "PREFERENCE_LINKS",
    "SEQUENCE_REDUCTIONS",
    "aggregate",
    "clipped_value_loss",
    "dpo_loss",
    "entropy_from_logits",
    "kl_estimate",
    "kto_kl_anchor",
    "kto_loss",
    "log_odds",
    "logprobs_and_entropy",
    "ppo_clip_loss",
    "preference_link",
    "sequence_logps",
    "token_logprobs_from_logits",
]
