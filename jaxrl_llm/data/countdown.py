"""Countdown as a TFDS dataset (array_record): reach a target from given numbers with + - * /.

Records, in the GSM8K schema plus two fields:

    {"question": "3 7 25>46:", "answer": "#### 25+3*7", "numbers": "3 7 25", "target": "46"}

The question lists the source numbers (in the order drawn) and the target; a solution uses
every number exactly once with + - * / and parentheses (the rules of
jaxrl_llm/rewards/countdown.py, whose `countdown` reward is the verifier). The answer holds ONE
valid solution, so SFT can warm-start on it (`final_answer` gives "25+3*7"); the RL reward and
evaluation check any solution with the verifier and never read it.

Generation (`generate_questions`, deterministic for a seed, no TensorFlow): draw the numbers
uniformly in [1, max_number] (with repetition), then combine them as in the TV game: pick two
of the remaining values at random and an operation valid on them (a + b, a * b, the larger
minus the smaller if they differ, the larger divided by the smaller if it divides exactly, each
with equal probability), replace the two by the result, repeat until one value is left. Every
intermediate is thus a positive integer and every question is solvable by construction. Draws
whose result falls outside [min_target, max_target] or whose question was already drawn are
redrawn (so questions with several in-range targets, e.g. of small numbers, are a little more
frequent than uniform). Questions are distinct by (sorted numbers, target): the same puzzle with
its numbers in another order counts as the same question, so none appears in two splits. The
distinct questions are shuffled before being cut into validation, test and train, so every
split has the same distribution. Only Python's `random.random()` is used (its output is stable
across Python versions for a seed). The solution is written with the fewest parentheses
(`format_expression` of jaxrl_llm/rewards/countdown.py).

Builder configs: `n3` (default): 3 numbers in [1, 25], targets in [1, 100] (27,429 distinct
questions exist; 12,000 train / 512 validation / 512 test); `n4`: 4 numbers in [1, 25], targets
in [1, 200] (harder and far larger: 100,000 train).
"""

from __future__ import annotations

import dataclasses
import random

import tensorflow_datasets as tfds

import jaxrl_llm.data.arithmetic  # noqa: F401  (TFDS importlib_resources workaround, see there)
from jaxrl_llm.rewards.countdown import Node, format_expression, format_question

# Every character of questions and answers ('#' and ' ' of "#### " included, for sft_target='answer').
COUNTDOWN_ALPHABET = "0123456789+-*/()>:# \n"


def _below(rng: random.Random, n: int) -> int:
    """Uniform in [0, n) from rng.random() alone (stable across Python versions)."""
    return min(int(rng.random() * n), n - 1)


def _combine(rng: random.Random, numbers: list[int]) -> tuple[int, Node]:
    """(value, tree) of one random TV-game combination of all `numbers`."""
    items = [(n, n) for n in numbers]
    while len(items) > 1:
        i = _below(rng, len(items))
        j = _below(rng, len(items) - 1)
        j += j >= i
        (a, x), (b, y) = items[i], items[j]
        choices = [(a + b, ("+", x, y)), (a * b, ("*", x, y))]
        if a != b:
            choices.append((a - b, ("-", x, y)) if a > b else (b - a, ("-", y, x)))
        if a % b == 0:
            choices.append((a // b, ("/", x, y)))
        elif b % a == 0:
            choices.append((b // a, ("/", y, x)))
        combined = choices[_below(rng, len(choices))]
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [combined]
    return items[0]


def generate_questions(
    count: int,
    *,
    num_numbers: int = 3,
    max_number: int = 25,
    min_target: int = 1,
    max_target: int = 100,
    seed: int = 0,
    max_draws_per_question: int = 1000,
) -> list[dict]:
    """`count` distinct Countdown records (the module docstring's schema), shuffled.

    Raises ValueError when `max_draws_per_question * count` draws find fewer distinct questions
    (the configuration's question space is too small for `count`).
    """
    rng = random.Random(seed)
    seen, records = set(), []
    for _ in range(max_draws_per_question * count):
        if len(records) == count:
            break
        numbers = [1 + _below(rng, max_number) for _ in range(num_numbers)]
        target, tree = _combine(rng, numbers)
        key = (tuple(sorted(numbers)), target)
        if not min_target <= target <= max_target or key in seen:
            continue
        seen.add(key)
        records.append(
            {
                "question": format_question(numbers, target),
                "answer": f"#### {format_expression(tree)}",
                "numbers": " ".join(map(str, numbers)),
                "target": str(target),
            }
        )
    if len(records) < count:
        raise ValueError(
            f"found only {len(records)} distinct Countdown questions of the {count} asked for "
            f"({num_numbers} numbers in [1, {max_number}], targets in [{min_target}, {max_target}]): "
            "lower the split sizes or widen the ranges"
        )
    rng.shuffle(records)
    return records


@dataclasses.dataclass
class CountdownConfig(tfds.core.BuilderConfig):
    """One task: `num_numbers` numbers in [1, max_number], targets in [min_target, max_target]."""

    num_numbers: int = 3
    max_number: int = 25
    min_target: int = 1
    max_target: int = 100
    num_train: int = 12_000
    num_validation: int = 512
    num_test: int = 512
    seed: int = 0


class JaxrlCountdown(tfds.core.GeneratorBasedBuilder):
    """TFDS builder `jaxrl_countdown`: configs n3 (default), n4."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        CountdownConfig(name="n3", description="3 numbers in [1, 25], targets in [1, 100]"),
        CountdownConfig(
            name="n4",
            description="4 numbers in [1, 25], targets in [1, 200]",
            num_numbers=4,
            max_target=200,
            num_train=100_000,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Countdown puzzles: reach the target from the numbers with + - * / (one "
            "reference solution in '#### <expression>'; any solution is correct).",
            features=tfds.features.FeaturesDict(
                {name: tfds.features.Text() for name in ("question", "answer", "numbers", "target")}
            ),
            supervised_keys=("question", "answer"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        sizes = {"validation": c.num_validation, "test": c.num_test, "train": c.num_train}
        records = generate_questions(
            sum(sizes.values()),
            num_numbers=c.num_numbers,
            max_number=c.max_number,
            min_target=c.min_target,
            max_target=c.max_target,
            seed=c.seed,
        )
        splits, start = {}, 0
        for split, size in sizes.items():
            splits[split] = self._generate_examples(records[start : start + size])
            start += size
        return splits

    def _generate_examples(self, records: list[dict]):
        yield from enumerate(records)


def prepare_countdown(builder_config: str | CountdownConfig = "n3", data_dir: str | None = None):
    """Builds `jaxrl_countdown/<builder_config>` as array_record (once; later calls reuse it).

    data_dir: TFDS data directory; None or '' for TFDS's default (~/tensorflow_datasets).
    Returns the prepared builder: read a split with `builder.as_data_source(split)`.
    """
    if isinstance(builder_config, str) and builder_config not in JaxrlCountdown.builder_configs:
        raise ValueError(
            f"unknown countdown builder config {builder_config!r} (config field data.builder_config); "
            f"known: {sorted(JaxrlCountdown.builder_configs)}"
        )
    builder = JaxrlCountdown(config=builder_config, data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return builder
