"""Scalar metrics to `workdir/metrics.jsonl` (the source of truth) and TensorBoard event files.

Each `write` appends one line `{"step": 12, "phase": "train", "loss": 0.5, ...}` and flushes it,
so a killed run loses at most the line being written. Resuming from a checkpoint at step S with
`MetricsWriter(workdir, resume_step=S)` drops every line with step > S (all phases) and a torn last
line, so the finished file equals that of an uninterrupted run. TensorBoard gets
`purge_step=S + 1`, which hides the stale events of the killed run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _to_json_scalar(key: str, value: Any) -> bool | int | float | None:
    array = np.asarray(value)  # Python, numpy and jax scalars alike
    if array.size != 1:
        raise ValueError(f"metric {key!r} must be a scalar, got shape {array.shape}")
    if array.dtype == bool:
        return bool(array)
    if np.issubdtype(array.dtype, np.integer):
        return int(array.reshape(()))
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} ({array.dtype})")
    number = float(array.reshape(()))
    return number if math.isfinite(number) else None


def _parse_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
    return records


def read_metrics(path: str | os.PathLike, phase: str | None = None) -> list[dict]:
    """Records of a metrics file (or of `path/metrics.jsonl` for a workdir), optionally one phase."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = _parse_lines(f.read())
    return [r for r in records if phase is None or r.get("phase") == phase]


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet.

    tensorboardX imports torch whenever it is installed (for a type alias only), which costs a
    JAX training process ~170 MB of resident memory; `import torch` is made to fail while
    tensorboardX loads (it catches the ImportError), unless torch is already in use.
    """
    import sys

    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # a tensorboardX that needs torch after all: import it normally below
        SummaryWriter = None
    finally:
        del sys.modules["torch"]
    if SummaryWriter is None:
        from tensorboardX import SummaryWriter
    return SummaryWriter


class MetricsWriter:
    """Appends scalar metrics to `workdir/metrics.jsonl` and `workdir/tensorboard/`.

    Example:
      with MetricsWriter(workdir, resume_step=restored_step) as writer:
          writer.write(step, {"loss": loss, "reward_mean": reward})
          writer.write(step, {"greedy_accuracy": acc}, phase="eval")
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        tensorboard_flush_secs: float = 30.0,
        active: bool = True,
    ):
        """`resume_step`: the restored checkpoint's step; later lines are dropped. None: fresh or append.

        `active=False` writes nothing (the processes other than 0 of a multi-process run)."""
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = self._tb = None
        if not active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._repair(resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            purge_step = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"), purge_step=purge_step, flush_secs=tensorboard_flush_secs
            )

    def _repair(self, resume_step: int | None) -> None:
        """Rewrites the file without torn lines and without lines past `resume_step` (atomically)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            text = f.read()
        records = _parse_lines(text)
        if resume_step is not None:
            records = [r for r in records if r["step"] <= resume_step]
        kept = "".join(json.dumps(r) + "\n" for r in records)
        if kept == text:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(kept)
        os.replace(tmp, self.path)

    def truncate_after(self, step: int) -> None:
        """Drops lines with step > `step` (all phases); same as opening with `resume_step=step`."""
        if self._file is None:
            return
        self._file.close()
        self._repair(step)
        self._file = open(self.path, "a")

    def write(self, step: int, metrics: Mapping[str, Any], phase: str = "train") -> None:
        """One JSONL line (flushed) plus one TensorBoard scalar `f"{phase}/{key}"` per metric."""
        if "step" in metrics or "phase" in metrics:
            raise ValueError("metric names 'step' and 'phase' are reserved")
        step = int(step)
        scalars = {key: _to_json_scalar(key, value) for key, value in metrics.items()}
        if self._file is None:
            return
        self._file.write(json.dumps({"step": step, "phase": phase, **scalars}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"{phase}/{key}", float("nan") if value is None else float(value), step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
