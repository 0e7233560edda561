"""An offline code task and MBPP-style JSON-lines files for the code rewards.

Records are {"question", "answer", "solution"}: the question asks for a one-line function, the
answer is a JSON list of assert statements (the format `code_tests` reads, as MBPP's
`test_list`), and the solution is a reference implementation (not used by training; tests check
that it passes). `data.name = 'code'` selects the synthetic task (in memory, generated
deterministically: 10 expression templates x 12 constants x 3 function names = 360 tasks, split
60 test / 60 validation / 240 train, disjoint). Real MBPP-style data goes through the 'jsonl'
source: one {question, answer} object per line (answer a JSON list or a JSON string of one), see
`write_jsonl`.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Sequence

# Every character of Python source in the task (and most code): letters, digits, punctuation,
# space and newline.
CODE_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"

TEMPLATES = (
    ("x + {k}", lambda x, k: x + k),
    ("x - {k}", lambda x, k: x - k),
    ("x * {k}", lambda x, k: x * k),
    ("x // {k}", lambda x, k: x // k),
    ("x % {k}", lambda x, k: x % k),
    ("{k} - x", lambda x, k: k - x),
    ("max(x, {k})", lambda x, k: max(x, k)),
    ("min(x, {k})", lambda x, k: min(x, k)),
    ("abs(x - {k})", lambda x, k: abs(x - k)),
    ("x * x + {k}", lambda x, k: x * x + k),
)
NAMES = ("f", "g", "h")
CONSTANTS = range(1, 13)
SPLIT_SIZES = {"test": 60, "validation": 60}  # train: the rest (240)


def _task(template: str, fn, k: int, name: str, rng: random.Random) -> dict:
    expr = template.format(k=k)
    inputs = rng.sample(range(-20, 21), 3)
    tests = [f"assert {name}({x}) == {fn(x, k)}" for x in inputs]
    return {
        "question": f"Write a function {name}(x) that returns {expr}.\n",
        "answer": json.dumps(tests),
        "solution": f"def {name}(x):\n    return {expr}\n",
    }


def code_records(split: str, seed: int = 0) -> list[dict]:
    """The records of one split ('train' | 'validation' | 'test'; slices not supported)."""
    rng = random.Random(seed)
    tasks = [
        _task(template, fn, k, name, rng) for template, fn in TEMPLATES for k in CONSTANTS for name in NAMES
    ]
    random.Random(seed + 1).shuffle(tasks)
    test, validation = SPLIT_SIZES["test"], SPLIT_SIZES["validation"]
    splits = {
        "test": tasks[:test],
        "validation": tasks[test : test + validation],
        "train": tasks[test + validation :],
    }
    if split not in splits:
        raise ValueError(f"the code task has no split {split!r}; its splits are {sorted(splits)}")
    return splits[split]


def code_source(config, split: str) -> list[dict]:
    """`make_source` for data.name='code' (config.seed of the data config, default 0)."""
    return code_records(split, int(getattr(config, "seed", 0) or 0))


def write_jsonl(records: Sequence[dict], path: str) -> None:
    """Writes records as JSON lines (the format of the 'jsonl' source)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def write_code_jsonl(directory: str, splits: Sequence[str] = ("train", "validation", "test")) -> str:
    """Writes the synthetic task as `{directory}/code_{split}.jsonl` and returns the data.path
    pattern for the 'jsonl' source."""
    for split in splits:
        write_jsonl(code_records(split), os.path.join(directory, f"code_{split}.jsonl"))
    return os.path.join(directory, "code_{split}.jsonl")
