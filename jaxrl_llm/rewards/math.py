"""Verifiable rewards for math answers, a reward registry, and batched scoring.

A reward function has the keyword-only signature

    fn(*, prompt: str, completion: str, answer: str, finished: bool) -> float

where `answer` is the dataset's raw answer field (GSM8K style, "...#### 72") and `finished` is
True when the sample emitted a stop token before the length limit. Register one by name with
`@register_reward("name")` and select it in a config (`config.rewards`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from jaxrl_llm.data.sources import final_answer
from jaxrl_llm.registry import Registry, qualified_name

RewardFn = Callable[..., float]

_REWARDS = Registry("reward", "rewards", "jaxrl_llm.rewards.register_reward")


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned a non-finite / non-numeric value for a sample."""


def register_reward(name: str):
    """Decorator registering a reward function under `name` (usable from configs' `rewards`)."""
    return _REWARDS.register(name)


def get_reward(name: str) -> RewardFn:
    """The reward function registered under `name`; ValueError listing the known ones otherwise."""
    return _REWARDS.get(name)


def list_rewards() -> list[str]:
    """Names of all registered reward functions, sorted."""
    return _REWARDS.names()


# A number: optional sign and '$', thousands separated by commas or plain digits, optional decimals.
_NUMBER = r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\$?\.\d+"


def normalize_number(text: str) -> str | None:
    """Canonical form of a number ('$1,234.50' -> '1234.5', '72.0' -> '72', '+3.' -> '3'), or None
    when `text` is not one number."""
    cleaned = text.strip().replace("$", "").replace(",", "").rstrip(".")
    cleaned = cleaned.removeprefix("+")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite() or not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", cleaned):
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_answer(text: str) -> str | None:
    """The first number in `text`, canonical; else its first non-empty line (None if blank)."""
    match = re.search(_NUMBER, text)
    if match:
        return normalize_number(match.group())
    lines = [line.strip().rstrip(".").strip() for line in text.splitlines()]
    return next((line for line in lines if line), None)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (nested braces allowed); None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    begin, depth = start + len("\\boxed{"), 1
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None  # unclosed: the sample was cut


def _clean_latex(text: str) -> str:
    """Drops LaTeX decoration around a boxed answer: \\text{units}, \\$, thin spaces, {,}."""
    text = re.sub(r"\\text\{[^{}]*\}", "", text)
    text = re.sub(r"\\[,!;: ]", "", text.replace("{,}", ",").replace("\\$", ""))
    return text.strip().strip("$").strip()


def extract_final_answer(text: str, allow_last_number: bool = True) -> str | None:
    """The answer a completion commits to, normalised; None when there is none.

    In priority order: GSM8K '#### x', LaTeX '\\boxed{x}' (nested braces), 'answer is x' /
    'answer: x' (a number on the same line), else (when allow_last_number) the last number in the
    text. After '####' a non-numeric answer is its first line. Numbers are
    normalised ('$', commas, trailing '.', leading '+' stripped; '72.0' -> '72'); a non-numeric
    boxed answer such as '\\frac{1}{2}' is returned as written.
    """
    if "####" in text:
        found = _first_answer(text.rsplit("####", 1)[1])
        if found is not None:
            return found
    boxed = _boxed(text)
    if boxed is not None and _clean_latex(boxed):
        boxed = _clean_latex(boxed)
        return normalize_number(boxed) or boxed
    for said in reversed(re.findall(r"answer\s*(?:is|:)\s*:?([^\n]*)", text, flags=re.IGNORECASE)):
        number = re.search(_NUMBER, said)
        if number:
            return normalize_number(number.group())
    if allow_last_number:
        numbers = re.findall(_NUMBER, text)
        if numbers:
            return normalize_number(numbers[-1])
    return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """True when two answers are the same number ('72' == '72.0' == '$72'), or the same text."""
    if predicted is None:
        return False
    a, b = normalize_number(predicted), normalize_number(reference)
    if a is not None and b is not None:
        return Decimal(a) == Decimal(b)
    return predicted.strip() == reference.strip()


@register_reward("exact_match")
def exact_match(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the sample finished and its stripped text equals final_answer(answer)."""
    del prompt
    return float(finished and completion.strip() == final_answer(answer))


@register_reward("math_answer")
def math_answer(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff extract_final_answer(completion) equals final_answer(answer) as a number.

    A truncated sample (finished=False) counts only with an explicit answer ('####', '\\boxed',
    'answer is'): its last number is wherever the length limit cut the reasoning.
    """
    del prompt
    return float(
        answers_match(extract_final_answer(completion, allow_last_number=finished), final_answer(answer))
    )


@register_reward("format")
def format_reward(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the sample finished and states its answer explicitly ('####', '\\boxed', 'answer is')."""
    del prompt, answer
    return float(finished and extract_final_answer(completion, allow_last_number=False) is not None)


@register_reward("finished")
def finished_reward(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the sample emitted a stop token (EOS) before the length limit: a rule-based judge
    (`judge_samples`, CGPO)."""
    del prompt, completion, answer
    return float(finished)


@register_reward("is_number")
def is_number(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the whole stripped completion is one number (`normalize_number`: '579', '-3.5',
    '$1,234'), whatever its value: the arithmetic task's format judge (`judge_samples`, CGPO)."""
    del prompt, answer, finished
    return float(normalize_number(completion) is not None)


def _shorten(text: str, limit: int = 200) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def score_completions(
    reward_fns: Sequence[tuple[str, RewardFn, float]],
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    finished: Sequence[bool],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scores N samples with every (name, fn, weight) in reward_fns.

    Returns (total [N] float32 = sum of weight * value, {name: [N] float32 raw values}). A function
    that raises, or returns a non-number or a non-finite value, raises RewardFunctionError naming
    the function and the sample (prompt, completion and answer shown), chained from the cause.

    A function with a `batched(prompts, completions, answers, finished) -> [N]` attribute is
    scored through it in one call (the sandboxed code rewards run their samples in parallel).
    """
    n = len(completions)
    if not len(prompts) == len(answers) == len(finished) == n:
        raise ValueError(
            f"score_completions needs one prompt, answer and finished flag per completion; got "
            f"{len(prompts)} prompts, {n} completions, {len(answers)} answers, {len(finished)} finished"
        )
    total = np.zeros(n, np.float32)
    values = {}
    for name, fn, weight in reward_fns:
        column = np.zeros(n, np.float32)
        batched = getattr(fn, "batched", None)
        if batched is not None:
            column[:] = _batched_column(name, fn, batched, prompts, completions, answers, finished)
            values[name] = column
            total += np.float32(weight) * column
            continue
        for i in range(n):
            sample = dict(
                prompt=str(prompts[i]),
                completion=str(completions[i]),
                answer=str(answers[i]),
                finished=bool(finished[i]),
            )
            try:
                value = fn(**sample)
            except Exception as e:
                raise _reward_error(name, fn, i, sample, f"raised {type(e).__name__}: {e}") from e
            if isinstance(value, np.ndarray) and value.shape == ():
                value = value.item()
            if not isinstance(value, int | float | np.number):
                problem = f"returned {type(value).__name__} {_shorten(str(value), 80)}, not a float"
                raise _reward_error(name, fn, i, sample, problem)
            if not math.isfinite(value):
                raise _reward_error(name, fn, i, sample, f"returned the non-finite value {value}")
            column[i] = value
        values[name] = column
        total += np.float32(weight) * column
    return total, values


def _batched_column(name, fn, batched, prompts, completions, answers, finished) -> np.ndarray:
    try:
        column = np.asarray(
            batched(list(prompts), list(completions), list(answers), list(finished)), np.float32
        )
    except Exception as e:
        raise RewardFunctionError(
            f"reward function {name!r} ({qualified_name(fn)}) raised {type(e).__name__}: {e}"
        ) from e
    if column.shape != (len(completions),) or not np.isfinite(column).all():
        raise RewardFunctionError(
            f"reward function {name!r} ({qualified_name(fn)}).batched returned shape {column.shape} or non-finite "
            f"values; it must return {len(completions)} finite floats"
        )
    return column


def _reward_error(name: str, fn, index: int, sample: dict, problem: str) -> RewardFunctionError:
    shown = "".join(f"\n  {k}: {_shorten(v) if isinstance(v, str) else v}" for k, v in sample.items())
    return RewardFunctionError(
        f"reward function {name!r} ({qualified_name(fn)}) {problem} on sample {index}:{shown}"
    )
