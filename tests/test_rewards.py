"""Tests for jaxrl_llm.rewards: answer extraction, verifiable rewards, the registry, scoring."""

import math

import numpy as np
import pytest

from jaxrl_llm.rewards import (
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
from jaxrl_llm.rewards import math as rewards_math


@pytest.mark.parametrize(
    "text, expected",
    [
        # GSM8K marker wins over everything else.
        ("48/2 = 24\n48+24 = 72\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("#### $18.00", "18"),
        ("#### -3", "-3"),
        ("#### +5.", "5"),
        ("#### 72 apples\nextra 9", "72"),
        ("first #### 1 then #### 2", "2"),
        ("so \\boxed{5} and #### 6", "6"),
        ("#### Paris", "Paris"),
        ("#### \n 44", "44"),
        # \boxed, nested braces and LaTeX decoration.
        ("The result is \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("$\\boxed{\\$1{,}000\\text{ dollars}}$", "1000"),
        ("\\boxed{3.50}", "3.5"),
        ("\\boxed{1\\,000}", "1000"),
        ("cut \\boxed{12", "12"),  # unclosed: falls back to the last number
        # "answer is" / "answer:".
        ("The answer is 15 apples, from 3 boxes of 5.", "15"),
        ("Final answer: $2,500.", "2500"),
        ("the ANSWER IS: -7", "-7"),
        ("My answer is below.\n3 + 4 = 7", "7"),  # no number on the line: last number
        # Last number in the text.
        ("3 + 4 = 7", "7"),
        ("It costs $12.00.", "12"),
        ("579", "579"),
        (" 579\n", "579"),
        ("0.50", "0.5"),
        ("1,2,3", "3"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_final_answer_without_last_number():
    assert extract_final_answer("3 + 4 = 7", allow_last_number=False) is None
    assert extract_final_answer("so #### 7", allow_last_number=False) == "7"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", "72"),
        ("72.0", "72"),
        ("72.", "72"),
        ("+72", "72"),
        ("$1,234.50", "1234.5"),
        ("-0", "0"),
        ("-.5", "-0.5"),
        ("007", "7"),
        ("1e3", None),
        ("nan", None),
        ("seven", None),
        ("1 2", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_answers_match():
    assert answers_match("72", "72.0") and answers_match("72.00", "72") and answers_match("1234", "1,234")
    assert not answers_match("72", "73") and not answers_match(None, "72")
    assert answers_match("Paris", " Paris ") and not answers_match("Paris", "72")


def call(fn, completion, answer="#### 579", finished=True):
    return fn(prompt="123+456=", completion=completion, answer=answer, finished=finished)


@pytest.mark.parametrize(
    "completion, answer, finished, expected",
    [
        ("579", "#### 579", True, 1.0),
        (" 579\n", "#### 579", True, 1.0),
        ("579", "#### 579", False, 0.0),  # truncated
        ("578", "#### 579", True, 0.0),
        ("579.0", "#### 579", True, 0.0),  # exact text only
        ("#### 579", "#### 579", True, 0.0),
        ("1234", "reasoning\n#### 1,234", True, 1.0),
        ("", "#### 579", True, 0.0),
    ],
)
def test_exact_match(completion, answer, finished, expected):
    assert call(exact_match, completion, answer, finished) == expected


@pytest.mark.parametrize(
    "completion, answer, finished, expected",
    [
        ("579", "#### 579", True, 1.0),
        ("579.0", "#### 579", True, 1.0),
        ("The sum is 579.", "#### 579", True, 1.0),
        ("123 + 456 = 579\n#### 579", "#### 579", True, 1.0),
        ("\\boxed{579}", "#### 579", True, 1.0),
        ("#### $1,234", "r\n#### 1,234", True, 1.0),
        ("#### 578", "#### 579", True, 0.0),
        ("#### 578\nno wait, 579", "#### 579", True, 0.0),  # the marker wins
        ("no number", "#### 579", True, 0.0),
        ("", "#### 579", False, 0.0),
        ("579", "#### 579", False, 0.0),  # truncated: the last number does not count
        ("so 123 + 456 = 579", "#### 579", False, 0.0),
        ("#### 579\nand then more text", "#### 579", False, 1.0),  # explicit answer before the cut
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True, 1.0),
    ],
)
def test_math_answer(completion, answer, finished, expected):
    assert call(math_answer, completion, answer, finished) == expected


@pytest.mark.parametrize(
    "completion, finished, expected",
    [
        ("#### 5", True, 1.0),
        ("\\boxed{5}", True, 1.0),
        ("The answer is 5", True, 1.0),
        ("5", True, 0.0),
        ("#### 5", False, 0.0),
    ],
)
def test_format_reward(completion, finished, expected):
    assert call(format_reward, completion, finished=finished) == expected


def test_rewards_return_python_floats():
    for fn in (exact_match, math_answer, format_reward):
        assert type(call(fn, "579")) is float


# --- registry ------------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are dropped afterwards."""
    monkeypatch.setattr(rewards_math._REWARDS, "_entries", dict(rewards_math._REWARDS._entries))


def test_builtin_rewards_are_registered():
    assert {"exact_match", "math_answer", "format"} <= set(list_rewards())
    assert get_reward("math_answer") is math_answer and get_reward("exact_match") is exact_match


def test_get_reward_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        get_reward("accuracy")
    message = str(info.value)
    assert "'accuracy'" in message and "config field rewards" in message
    assert "exact_match" in message and "math_answer" in message and "register_reward" in message


def test_register_reward(scratch_registry):
    @register_reward("length_penalty")
    def length_penalty(*, prompt, completion, answer, finished):
        return -0.01 * len(completion)

    assert "length_penalty" in list_rewards() and get_reward("length_penalty") is length_penalty
    register_reward("length_penalty")(length_penalty)  # the same function again: fine

    def other(*, prompt, completion, answer, finished):
        return 0.0

    with pytest.raises(ValueError, match="'length_penalty' is already registered"):
        register_reward("length_penalty")(other)


# --- score_completions ---------------------------------------------------------------------------

PROMPTS = ["1+1=", "2+2=", "3+3="]
ANSWERS = ["#### 2", "#### 4", "#### 6"]


def test_score_completions_weights_and_raw_values():
    reward_fns = [("math", math_answer, 1.0), ("exact", exact_match, 0.5), ("format", format_reward, -2.0)]
    completions = ["2", "#### 4", "7"]
    total, values = score_completions(reward_fns, PROMPTS, completions, ANSWERS, [True, True, True])
    assert total.dtype == np.float32 and total.shape == (3,)
    assert list(values) == ["math", "exact", "format"]
    np.testing.assert_array_equal(values["math"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(values["exact"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(values["format"], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(total, [1.5, -1.0, 0.0])
    assert all(v.dtype == np.float32 for v in values.values())


def test_score_completions_accepts_numpy_inputs_and_values():
    reward = lambda *, prompt, completion, answer, finished: (
        np.float64(len(answer)) if finished else np.array(0.5)
    )
    total, values = score_completions(
        [("r", reward, 2.0)],
        np.array(PROMPTS),
        np.array(["a", "b", "c"]),
        np.array(ANSWERS),
        np.array([True, False, True]),
    )
    np.testing.assert_allclose(values["r"], [6.0, 0.5, 6.0])
    np.testing.assert_allclose(total, [12.0, 1.0, 12.0])
    empty_total, empty_values = score_completions([("r", reward, 1.0)], [], [], [], [])
    assert empty_total.shape == (0,) and empty_values["r"].shape == (0,)


def test_raising_reward_is_reported_with_the_sample():
    def fragile(*, prompt, completion, answer, finished):
        if "boom" in completion:
            raise KeyError("no such key")
        return 1.0

    completions = ["fine", "boom " + "x" * 1000, "fine"]
    with pytest.raises(RewardFunctionError) as info:
        score_completions(
            [("math", math_answer, 1.0), ("fragile", fragile, 1.0)], PROMPTS, completions, ANSWERS, [True] * 3
        )
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, KeyError)
    assert "'fragile'" in message and "fragile" in message and "sample 1" in message
    assert "KeyError" in message and "no such key" in message
    assert "prompt: '2+2='" in message and "answer: '#### 4'" in message and "finished: True" in message
    assert "completion: 'boom xxx" in message and "...(truncated)" in message
    assert len(message) < 1000


@pytest.mark.parametrize(
    "value, problem",
    [
        (math.nan, "non-finite value nan"),
        (math.inf, "non-finite value inf"),
        (None, "returned NoneType"),
        ("1.0", "returned str"),
    ],
)
def test_bad_reward_values_are_reported(value, problem):
    bad = lambda *, prompt, completion, answer, finished: value if completion == "c" else 0.0
    with pytest.raises(RewardFunctionError, match=rf"reward function 'bad' .*{problem}.* on sample 2:"):
        score_completions([("bad", bad, 1.0)], PROMPTS, ["a", "b", "c"], ANSWERS, [True] * 3)


def test_score_completions_length_mismatch():
    with pytest.raises(ValueError, match="2 prompts, 3 completions"):
        score_completions([("math", math_answer, 1.0)], PROMPTS[:2], ["a", "b", "c"], ANSWERS, [True] * 3)


def test_score_completions_uses_a_batched_form_in_one_call():
    calls = []

    def per_sample(*, prompt, completion, answer, finished):
        raise AssertionError("the batched form must be used")

    def batched(prompts, completions, answers, finished):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    per_sample.batched = batched
    total, values = score_completions(
        [("lengths", per_sample, 2.0)], ["p"] * 3, ["a", "bb", ""], ["x"] * 3, [True] * 3
    )
    assert (
        calls == [3] and values["lengths"].tolist() == [1.0, 2.0, 0.0] and total.tolist() == [2.0, 4.0, 0.0]
    )
    per_sample.batched = lambda *args: [1.0, float("nan"), 0.0]
    with pytest.raises(RewardFunctionError, match="non-finite"):
        score_completions([("lengths", per_sample, 1.0)], ["p"] * 3, ["a", "bb", ""], ["x"] * 3, [True] * 3)
