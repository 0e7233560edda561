"""Synthetic aspect scores: scored completions for a multi-label reward model, generated offline
from question/answer records (`pipeline.scored_dataset` on the arithmetic task).

Record i gives one completion, of a kind drawn from (seed, i): the final answer ("579"), a
near miss (`pipeline.wrong_answer`, "589"), or either followed by a short suffix ("579+1",
"589 ="). Its K = 3 labels, in [0, 1], are functions of the text alone (`aspect_scores`):

  correctness  1 when the completion's leading number is the final answer, else 0;
  brevity      min(1, len(final answer) / len(completion)): 1 for a bare number of its length;
  format       1 when the whole completion is one number (digits, optional sign and decimals).

The four kinds give every combination of correctness and format, so the aspects disagree: a
reward model has to learn each one (correctness needs the arithmetic itself).
"""

from __future__ import annotations

import re

import numpy as np

from jaxrl_llm.data.pipeline import wrong_answer

ASPECTS = ("correctness", "brevity", "format")
_SUFFIXES = ("=", "#", " =", "+1", " 0")
_STREAM = 0x617370  # the numpy seed word of the completion kinds ('asp')
_NUMBER = r"-?\d+(?:\.\d+)?"


def aspect_scores(completion: str, answer: str) -> tuple[float, float, float]:
    """(correctness, brevity, format) of `completion` for the final answer `answer`.
    Example: ("579+1", "579") -> (1.0, 0.6, 0.0); ("589", "579") -> (0.0, 1.0, 1.0)."""
    leading = re.match(_NUMBER, completion)
    correctness = float(leading is not None and leading.group() == answer)
    brevity = min(1.0, len(answer) / max(len(completion), 1))
    well_formed = float(re.fullmatch(_NUMBER, completion) is not None)
    return correctness, brevity, well_formed


def aspect_example(answer: str, seed: int, index: int) -> tuple[str, tuple[float, float, float]]:
    """(completion, its `aspect_scores`) for record `index`: the final answer or a near miss
    (`wrong_answer(answer, seed, index)`), with a suffix from _SUFFIXES half of the time; each
    of the four kinds with probability 1/4, deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, _STREAM, index])
    completion = answer if rng.random() < 0.5 else wrong_answer(answer, seed, index)
    if rng.random() < 0.5:
        completion += _SUFFIXES[int(rng.integers(len(_SUFFIXES)))]
    return completion, aspect_scores(completion, answer)


def check_num_labels(num_labels: int | None) -> None:
    """The synthetic scores have len(ASPECTS) labels: a reward head of `num_labels` outputs
    (config field model.num_labels; None: unchecked) must match."""
    if num_labels is not None and num_labels != len(ASPECTS):
        raise ValueError(
            f"config field model.num_labels={num_labels}: question/answer records give the "
            f"{len(ASPECTS)} synthetic aspect scores {ASPECTS} (jaxrl_llm/data/aspects.py); set "
            f"--config.model.num_labels={len(ASPECTS)}, or train on scored records "
            "(prompt/completion/labels, --config.data.path)"
        )
