"""Synthetic arithmetic as a real TFDS dataset, in the GSM8K schema, written as array_record.

Records are {"question": "123+456=", "answer": "#### 579"}: GSM8K's "<reasoning>\\n#### <final>"
with empty reasoning, so the same prompt formatting, targets and verifiers serve both datasets.
Generation is deterministic (fixed seed per config) and the splits are disjoint by question.
Preparing needs neither TensorFlow nor Beam: write array_record and read it through
`builder.as_data_source(split)` (never `tfds.load`/`as_dataset`, which import TensorFlow).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.resources.abc
import sys

import numpy as np
import tensorflow_datasets as tfds

# TFDS 4.9.10 touches the `importlib_resources` backport (declared as its dependency only for
# Python < 3.9) whenever it locates a builder's code, i.e. in every download_and_prepare. The
# standard library's importlib.resources has the same API, so stand it in when the backport is
# missing; `pip install importlib_resources` makes this a no-op.
try:
    import importlib_resources  # noqa: F401
except ImportError:
    sys.modules.setdefault("importlib_resources", importlib.resources)

OPERATORS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}


@dataclasses.dataclass
class ArithmeticConfig(tfds.core.BuilderConfig):
    """One task: `a <op> b` with a, b uniform in [min_operand, max_operand], drawn without repetition.

    The split sizes must fit the (max_operand - min_operand + 1)**2 distinct questions.
    """

    op: str = "+"
    min_operand: int = 0
    max_operand: int = 999
    num_train: int = 20000
    num_validation: int = 512
    num_test: int = 512
    seed: int = 0


class JaxrlArithmetic(tfds.core.GeneratorBasedBuilder):
    """TFDS builder `jaxrl_arithmetic`: configs add3_fixed (default), add3, add2, mul2."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "add3: operands in [100, 999] and 200k training questions; min_operand field.",
        "1.2.0": "add3_fixed (the default): operands in [100, 499], so every sum has 3 digits.",
    }
    BUILDER_CONFIGS = [
        # Every answer has the same width, so the position of each answer digit relative to the
        # operand digits it depends on is fixed. With add3's 3- or 4-digit sums, small models often
        # learned the digit alignment for one answer width only (e.g. 89% on 3-digit sums, 10% on
        # 4-digit ones) and GRPO could not repair it; see experiments/README.md.
        ArithmeticConfig(
            name="add3_fixed",
            description="a+b, a and b in [100, 499] (every sum has 3 digits)",
            min_operand=100,
            max_operand=499,
            num_train=150_000,
        ),
        # 3-digit operands and 200k training questions: with 20k, SFT memorised them and learned
        # slowly. Sums have 3 or 4 digits.
        ArithmeticConfig(
            name="add3", description="a+b, a and b in [100, 999]", min_operand=100, num_train=200_000
        ),
        # Two-digit tasks have 10**4 distinct questions: all of them are used.
        ArithmeticConfig(name="add2", description="a+b, a and b in [0, 99]", max_operand=99, num_train=8976),
        ArithmeticConfig(
            name="mul2", description="a*b, a and b in [0, 99]", op="*", max_operand=99, num_train=8976
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic arithmetic questions with GSM8K-style answers ('#### <final>').",
            features=tfds.features.FeaturesDict(
                {"question": tfds.features.Text(), "answer": tfds.features.Text()}
            ),
            supervised_keys=("question", "answer"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        if config.op not in OPERATORS:
            raise ValueError(f"unknown operator {config.op!r}; known: {sorted(OPERATORS)}")
        lo = config.min_operand
        n = config.max_operand - lo + 1
        sizes = {"validation": config.num_validation, "test": config.num_test, "train": config.num_train}
        total = sum(sizes.values())
        if total > n * n:
            raise ValueError(
                f"config {config.name!r} asks for {total} distinct questions but only {n * n} exist "
                f"with operands in [{lo}, {config.max_operand}]: lower the split sizes"
            )
        # Distinct (a, b) pairs, so no question appears in two splits (or twice in one).
        pairs = np.random.default_rng(config.seed).choice(n * n, size=total, replace=False)
        splits, start = {}, 0
        for split, size in sizes.items():
            chosen = pairs[start : start + size]
            splits[split] = self._generate_examples(lo + chosen // n, lo + chosen % n)
            start += size
        return splits

    def _generate_examples(self, a: np.ndarray, b: np.ndarray):
        op = self.builder_config.op
        for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
            yield i, {"question": f"{x}{op}{y}=", "answer": f"#### {OPERATORS[op](x, y)}"}


def prepare_arithmetic(builder_config: str | ArithmeticConfig = "add3_fixed", data_dir: str | None = None):
    """Builds `jaxrl_arithmetic/<builder_config>` as array_record (once; later calls reuse it).

    data_dir: TFDS data directory; None or '' for TFDS's default (~/tensorflow_datasets).
    Returns the prepared builder: read a split with `builder.as_data_source(split)`.
    """
    if isinstance(builder_config, str) and builder_config not in JaxrlArithmetic.builder_configs:
        raise ValueError(
            f"unknown arithmetic builder config {builder_config!r} (config field data.builder_config); "
            f"known: {sorted(JaxrlArithmetic.builder_configs)}"
        )
    builder = JaxrlArithmetic(config=builder_config, data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return builder
