"""Rewards: verifiers for math answers, a registry of reward functions by name, batched scoring."""

from jaxrl_llm.rewards.math import (
    RewardFn,
    RewardFunctionError,
    answers_match,
    exact_match,
    extract_final_answer,
    format_reward,
    get_reward,
    list_rewards,
    math_answer,
    normalize_number,
    register_reward,
    score_completions,
)

__all__ = [
    "RewardFn",
    "RewardFunctionError",
    "answers_match",
    "exact_match",
    "extract_final_answer",
    "format_reward",
    "get_reward",
    "list_rewards",
    "math_answer",
    "normalize_number",
    "register_reward",
    "score_completions",
]
