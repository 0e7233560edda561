"""Countdown: the generator, the TFDS builder, the verifier rewards and one smoke training run."""

import random

import ml_collections
import numpy as np
import pytest
from run_helpers import load_config

from jaxrl_llm.data.countdown import (
    COUNTDOWN_ALPHABET,
    JaxrlCountdown,
    generate_questions,
    prepare_countdown,
)
from jaxrl_llm.data.pipeline import check_prompt_lengths, check_target_lengths
from jaxrl_llm.data.sources import final_answer, make_source
from jaxrl_llm.data.tokenizer import char_tokenizer
from jaxrl_llm.rewards import get_reward, score_completions
from jaxrl_llm.rewards.countdown import (
    check_solution,
    evaluate,
    format_expression,
    format_question,
    parse_expression,
    parse_question,
)
from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.trainer import Trainer


def reward(completion, prompt="2 3 4>10:", finished=True, name="countdown"):
    return get_reward(name)(prompt=prompt, completion=completion, answer="#### 2*3+4", finished=finished)


def key(record):
    return tuple(sorted(map(int, record["numbers"].split()))), int(record["target"])


def intermediates(tree):
    if isinstance(tree, int):
        return [evaluate(tree)]
    return [evaluate(tree), *intermediates(tree[1]), *intermediates(tree[2])]


def solves(record):
    return check_solution(final_answer(record["answer"]), *parse_question(record["question"]))


@pytest.mark.parametrize("num_numbers, max_target", [(3, 100), (4, 200)])
def test_generated_questions_are_deterministic_distinct_and_solvable(num_numbers, max_target):
    kwargs = dict(num_numbers=num_numbers, max_target=max_target)
    records = generate_questions(2000, **kwargs)
    assert records == generate_questions(2000, **kwargs)
    assert records != generate_questions(2000, seed=1, **kwargs)
    assert len({key(r) for r in records}) == len(records)
    for r in records:
        numbers, target = parse_question(r["question"])
        assert r["question"] == format_question(numbers, target)
        assert r["numbers"] == " ".join(map(str, numbers)) and r["target"] == str(target)
        assert len(numbers) == num_numbers and all(1 <= n <= 25 for n in numbers)
        assert 1 <= target <= max_target
        assert r["answer"].startswith("#### ") and solves(r), r
        assert reward(final_answer(r["answer"]), prompt=r["question"]) == 1.0
        # The TV-game rule of the generator: every intermediate is a positive integer.
        assert all(v.denominator == 1 and v > 0 for v in intermediates(parse_expression(r["answer"][5:])))
    assert {"+", "-", "*", "/", "("} <= set("".join(r["answer"] for r in records))


def test_too_small_question_space_raises():
    with pytest.raises(ValueError, match="found only 3 distinct"):
        generate_questions(5, num_numbers=1, max_number=3, max_draws_per_question=20)


@pytest.mark.parametrize(
    "tree, text",
    [
        (("-", 10, ("-", 5, 2)), "10-(5-2)"),
        (("+", 1, ("-", 5, 2)), "1+5-2"),  # same value without the parentheses
        (("-", ("-", 10, 5), 2), "10-5-2"),
        (("*", ("+", 1, 2), 3), "(1+2)*3"),
        (("/", 12, ("*", 2, 3)), "12/(2*3)"),
        (("*", 12, ("/", 6, 3)), "12*6/3"),
        (("+", ("*", 2, 3), ("/", 8, 4)), "2*3+8/4"),
    ],
)
def test_format_expression_uses_the_fewest_parentheses(tree, text):
    assert format_expression(tree) == text
    assert evaluate(parse_expression(text)) == evaluate(tree)


def test_formatted_random_trees_keep_their_value():
    rng = random.Random(0)

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            return rng.randint(1, 9)
        return (rng.choice("+-*/"), tree(depth - 1), tree(depth - 1))

    for _ in range(300):
        t = tree(4)
        assert evaluate(parse_expression(format_expression(t))) == evaluate(t)


@pytest.mark.parametrize(
    "completion",
    [
        "2*3+4",
        "4+3*2",
        "3*4-2",
        "4*3-2",
        "(2*3)+4",
        " 2 * 3 + 4 ",
        "((4))*3-2",
        "#### 2*3+4",
        "so #### 4*3-2",
    ],
)
def test_any_correct_expression_scores_one(completion):
    assert reward(completion) == 1.0
    assert reward(completion, name="countdown_format") == 1.0


def test_exact_rational_arithmetic_allows_fractional_and_negative_intermediates():
    assert reward("4/(3/6)", prompt="3 4 6>8:") == 1.0  # 3/6 = 1/2
    assert reward("6/3*4", prompt="3 4 6>8:") == 1.0
    assert reward("(2-4)*3+16", prompt="2 3 4 16>10:") == 1.0  # 2-4 = -2
    assert reward("6/4*3", prompt="3 4 6>4:") == 0.0  # 9/2, not 4


@pytest.mark.parametrize(
    "completion",
    [
        "2+3+4",  # wrong value (9)
        "2*3+5",  # a number not given
        "2*3",  # a number unused
        "4+4+2",  # 4 used twice, 3 unused
        "2*3+4+2-2",  # extra uses of 2
        "2*3+4=10",  # anything after the expression
        "-2+3*4",  # no unary minus
        "2*3+04",  # leading zero
        "2**3+4",
        "2*3+",
        "(2*3+4",
        "2*3+4)",
        "()",
        "2 3 4",
        "",
        "   ",
        "2*3+\u0664",  # a non-ASCII digit
        "2*3+4 words",
        "(" * 5000 + "2" + ")" * 5000,
        "1+" * 5000 + "1",
    ],
)
def test_invalid_expressions_score_zero(completion):
    assert reward(completion) == 0.0


def test_division_by_zero_and_malformed_prompts_score_zero():
    assert reward("5/(2-2)", prompt="2 2 5>5:") == 0.0
    assert reward("5+(2-2)", prompt="2 2 5>5:") == 1.0  # a repeated number may be used twice
    assert reward("5+2-2", prompt="2 2 5>5:", name="countdown_format") == 1.0
    assert reward("2*3+4", prompt="no question here") == 0.0
    assert reward("2*3+4", prompt="") == 0.0
    assert reward("2*3+4", finished=False) == 0.0
    assert reward("2*3+4", finished=False, name="countdown_format") == 0.0
    assert reward("2+3+4", name="countdown_format") == 1.0  # right numbers, any value
    assert reward("2+3", name="countdown_format") == 0.0


def test_the_question_is_the_last_one_in_the_prompt():
    prompt = "Example: 1 1 1>3: 1+1+1\nUse each number once.\n2 3 4>10:"
    assert parse_question(prompt) == ([2, 3, 4], 10)
    assert reward("2*3+4", prompt=prompt) == 1.0
    assert reward("1+1+1", prompt=prompt) == 0.0


def test_rewards_score_batches_through_the_registry():
    total, values = score_completions(
        [
            ("countdown", get_reward("countdown"), 1.0),
            ("countdown_format", get_reward("countdown_format"), 0.1),
        ],
        ["2 3 4>10:"] * 3,
        ["2*3+4", "2+3+4", "oops"],
        ["#### 2*3+4"] * 3,
        [True] * 3,
    )
    np.testing.assert_allclose(total, [1.1, 0.1, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(values["countdown"], [1, 0, 0])


def test_tfds_builder_writes_disjoint_solvable_splits(tfds_dir):
    prepare_countdown("n3", tfds_dir)
    config = ml_collections.ConfigDict(dict(name="countdown", builder_config="n3", data_dir=tfds_dir))
    splits = {split: make_source(config, split) for split in ("train", "validation", "test")}
    records = {split: source.__getitems__(range(len(source))) for split, source in splits.items()}
    assert {split: len(r) for split, r in records.items()} == {"train": 12000, "validation": 512, "test": 512}
    keys = {split: {key(r) for r in rs} for split, rs in records.items()}
    assert sum(map(len, keys.values())) == 13024  # distinct within and across splits
    # The builder writes the generator's records (TFDS shuffles their order by key).
    by_question = lambda rs: sorted(rs, key=lambda r: r["question"])  # noqa: E731
    assert by_question(records["validation"]) == by_question(generate_questions(13024)[:512])
    assert all(solves(r) for rs in records.values() for r in rs)
    with pytest.raises(ValueError, match="unknown countdown builder config 'add3_fixed'"):
        prepare_countdown("add3_fixed", tfds_dir)
    assert set(JaxrlCountdown.builder_configs) == {"n3", "n4"}


@pytest.mark.parametrize("arg, num_numbers, max_target", [(None, 3, 100), ("n4", 4, 200)])
def test_configs_fit_every_question_and_solution(arg, num_numbers, max_target):
    config = load_config("grpo_countdown", arg)
    assert config.tokenizer.alphabet == COUNTDOWN_ALPHABET and config.eval.reward == "countdown"
    tokenizer = char_tokenizer(config.tokenizer.alphabet)
    records = generate_questions(3000, num_numbers=num_numbers, max_target=max_target)
    # The longest question and solution (all numbers of 2 or 3 digits, the most parentheses).
    n = num_numbers
    longest = "(25+25)*(25+25)" if n == 4 else "(25+25)*25"
    records.append({"question": format_question([25] * n, max_target), "answer": f"#### {longest}"})
    assert set("".join(r["question"] + r["answer"] for r in records)) <= set(COUNTDOWN_ALPHABET)
    check_prompt_lengths(records, tokenizer, config.data.max_prompt_len)
    check_target_lengths(records, tokenizer, config.sampling.max_new_tokens)
    with pytest.raises(ValueError, match="unknown config argument"):
        load_config("grpo_countdown", "n5")


def test_smoke_config_trains_end_to_end(tfds_dir, tmp_path):
    config = load_config("grpo_countdown")
    config.data.data_dir = tfds_dir
    summary = Trainer(config, str(tmp_path)).fit()
    for phase in ("sft_before", "sft_after", "main_after"):
        assert np.isfinite(summary[phase]["greedy_accuracy"])
    main = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["phase"] == "main"]
    assert len(main) == config.train.steps
    for name in ("reward_mean", "reward/countdown", "zero_variance_groups", "loss", "entropy"):
        assert all(np.isfinite(r[name]) for r in main), name
