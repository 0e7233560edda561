"""Rewards: verifiers for math answers, Countdown expressions and code (run in a sandbox), a
registry of reward functions by name, batched scoring."""

from jaxrl_llm.rewards.code import (  # registers code_tests, code_tests_all, code_stdout
    code_stdout,
    code_tests,
    code_tests_all,
    extract_code,
    parse_tests,
    score_code_stdout,
    score_code_tests,
)
from jaxrl_llm.rewards.countdown import (  # registers countdown, countdown_format
    check_solution,
    countdown,
    countdown_format,
)
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
from jaxrl_llm.rewards.sandbox import (
    Program,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxResult,
    configure_default_sandbox,
    default_sandbox,
    run_many,
)

__all__ = [
    "Program",
    "RewardFn",
    "RewardFunctionError",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxResult",
    "answers_match",
    "check_solution",
    "code_stdout",
    "code_tests",
    "code_tests_all",
    "configure_default_sandbox",
    "countdown",
    "countdown_format",
    "default_sandbox",
    "extract_code",
    "exact_match",
    "extract_final_answer",
    "format_reward",
    "get_reward",
    "list_rewards",
    "math_answer",
    "normalize_number",
    "parse_tests",
    "register_reward",
    "run_many",
    "score_code_stdout",
    "score_code_tests",
    "score_completions",
]
