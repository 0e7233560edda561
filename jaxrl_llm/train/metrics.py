"""Scalar metrics to `workdir/metrics.jsonl` (the source of truth) and TensorBoard event files.

Each `write` appends one line `{"step": 12, "phase": "train", "loss": 0.5, ...}` and flushes it,
so a killed run loses at most the line being written. Evaluation lines before/after a phase
also carry `"tag": "<phase>_before" | "<phase>_after"` (what summary.json keeps of them, so a
deleted summary is rebuilt from the metrics: `summary_from_metrics`).

Exactly once. The trainer records in every checkpoint how many lines the file had when it was
saved (`MetricsWriter.rows`), and resumes with `MetricsWriter(workdir, keep_rows=N)`: the first N
lines stay, every later one (written after that checkpoint by the killed run, a torn last line
included) is dropped, so the finished file equals that of an uninterrupted run. This also covers
a restart before a phase's first checkpoint (N = the lines at the phase's start, so its 'before'
evaluation is not written twice) and at phase boundaries. `resume_step=S` (checkpoints that
predate the count) drops the lines with step > S instead. TensorBoard gets `purge_step=S + 1`,
which hides the stale events of the killed run (metrics.jsonl is the source of truth).

Torn lines. A line that is not valid JSON is never dropped silently: `read_metrics` skips it with
a `MetricsFileWarning` naming its line number (except an incomplete last line, which a running
writer may be in the middle of); a writer opening the file reports each one and repairs the file:
a torn last line past the kept lines is dropped, a damaged line among them is replaced by a
placeholder `{"step": <step of the line before>, "phase": "damaged", "line": n, "text": ...}`
(which keeps the line count the checkpoints refer to; `read_metrics` skips it).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
DAMAGED_PHASE = "damaged"  # the phase of a placeholder for a damaged line
_RESERVED = ("step", "phase", "tag")


class MetricsFileWarning(UserWarning):
    """A line of metrics.jsonl is not valid JSON (torn by a kill, or damaged)."""


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


def _split_lines(text: str) -> tuple[list[str], str | None]:
    """(complete lines, the last line when it has no newline: a write a kill interrupted)."""
    lines = text.split("\n")
    tail = lines.pop()
    return lines, tail or None


def _parse(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _warn(message: str, stacklevel: int = 3) -> None:
    """A `MetricsFileWarning` attributed to the caller of the public function (not this module)."""
    warnings.warn(message, MetricsFileWarning, stacklevel=stacklevel)


def read_metrics(path: str | os.PathLike, phase: str | None = None) -> list[dict]:
    """Records of a metrics file (or of `path/metrics.jsonl` for a workdir), optionally one phase.

    A line that is not a JSON record is skipped with a `MetricsFileWarning` naming it (an
    incomplete last line silently: a running writer may be writing it); placeholders of lines a
    writer found damaged (phase 'damaged') are skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines, tail = _split_lines(f.read())
    records = []
    for number, line in enumerate(lines, 1):
        record = _parse(line)
        if record is None:
            _warn(
                f"{path}: line {number} is not a valid JSON record (a damaged or torn line); skipped: {line[:80]!r}"
            )
        elif record.get("phase") != DAMAGED_PHASE:
            records.append(record)
    if tail is not None and (record := _parse(tail)) is not None and record.get("phase") != DAMAGED_PHASE:
        records.append(record)  # a complete record without its newline (written by hand)
    return [r for r in records if phase is None or r.get("phase") == phase]


def summary_from_metrics(records: list[dict]) -> dict:
    """The before/after evaluations of `read_metrics(workdir)` as summary.json holds them:
    `{"<phase>_<before|after>": {"step": s, "split": split, metric: value, ...}}` (the last
    line of each tag wins, as the summary's last write does)."""
    summary = {}
    for r in records:
        tag = r.get("tag")
        if not tag or r.get("phase") != "eval":
            continue
        values = {k: v for k, v in r.items() if k not in _RESERVED}
        split = next(iter(values), "/").split("/", 1)[0]
        summary[tag] = {
            "step": r["step"],
            "split": split,
            **{k.split("/", 1)[1]: v for k, v in values.items() if "/" in k},
        }
    return summary


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
        keep_rows: int | None = None,
        tensorboard_flush_secs: float = 30.0,
        active: bool = True,
    ):
        """`keep_rows`: the line count recorded with the checkpoint resumed from (`rows` when it
        was saved); later lines are dropped. `resume_step`: the restored checkpoint's step
        (without a line count); lines with a later step are dropped. Neither: fresh, or append.
        `rows` counts the file's lines (kept + written).

        `active=False` writes nothing (the processes other than 0 of a multi-process run); its
        `rows` counts the lines process 0 writes."""
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = self._tb = None
        self.rows = keep_rows or 0
        if not active:
            return
        os.makedirs(workdir, exist_ok=True)
        self.rows = self._repair(resume_step, keep_rows)
        self._file = open(self.path, "a")
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            purge_step = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"), purge_step=purge_step, flush_secs=tensorboard_flush_secs
            )

    def _repair(self, resume_step: int | None, keep_rows: int | None) -> int:
        """Rewrites the file (atomically) to the lines to keep: the first `keep_rows`, or those
        up to `resume_step`, or all complete ones; damaged lines among them become placeholders,
        each reported. Returns the number of lines kept."""
        if not os.path.exists(self.path):
            if keep_rows:
                _warn(
                    stacklevel=4,
                    message=f"{self.path} is missing; the {keep_rows} lines the checkpoint counted are lost",
                )
            return 0
        with open(self.path) as f:
            text = f.read()
        lines, tail = _split_lines(text)
        entries = lines + ([tail] if tail is not None else [])  # line n is entries[n - 1]
        records = [_parse(line) for line in entries]
        if keep_rows is not None:
            n = keep_rows
            if len(entries) < keep_rows:
                _warn(
                    stacklevel=4,
                    message=f"{self.path} has {len(entries)} lines, fewer than the {keep_rows} the checkpoint "
                    "counted (lines were lost); continuing after the last one",
                )
        elif resume_step is not None:  # up to the last record of step <= resume_step
            n = max(
                (i + 1 for i, r in enumerate(records) if r is not None and r["step"] <= resume_step),
                default=0,
            )
        else:
            n = len(entries) - (tail is not None and records[-1] is None)
        torn = [i + 1 for i in range(n, len(entries)) if records[i] is None]
        if torn:
            last = " (the last one incomplete: a run killed mid-write)" if torn[-1] == len(entries) else ""
            rest = (
                "" if keep_rows is None and resume_step is None else " (with every line after the checkpoint)"
            )
            _warn(
                stacklevel=4,
                message=f"{self.path}: line(s) {torn} are not valid JSON records{last}; dropped{rest}",
            )
        kept = [
            (i + 1, entries[i], records[i])
            for i in range(min(n, len(entries)))
            if records[i] is None
            or keep_rows is not None
            or resume_step is None
            or records[i]["step"] <= resume_step
        ]
        previous_step = 0
        out = []
        for number, line, record in kept:
            if record is None:
                _warn(
                    stacklevel=4,
                    message=f"{self.path}: line {number} is not a valid JSON record (damaged); replaced by a "
                    f"'{DAMAGED_PHASE}' placeholder: {line[:80]!r}",
                )
                line = json.dumps(
                    {"step": previous_step, "phase": DAMAGED_PHASE, "line": number, "text": line[:200]}
                )
            else:
                previous_step = record["step"]
            out.append(line + "\n")
        kept_text = "".join(out)
        if kept_text != text:
            from jaxrl_llm.train.workdir import atomic_write  # no import cycle at module load

            atomic_write(self.path, kept_text)
        return len(out)

    def truncate_after(self, step: int) -> None:
        """Drops lines with step > `step` (all phases); same as opening with `resume_step=step`."""
        if self._file is None:
            return
        self._file.close()
        self.rows = self._repair(step, None)
        self._file = open(self.path, "a")

    def write(
        self, step: int, metrics: Mapping[str, Any], phase: str = "train", tag: str | None = None
    ) -> None:
        """One JSONL line (flushed) plus one TensorBoard scalar `f"{phase}/{key}"` per metric;
        `tag` (a string) is stored in the line, not in TensorBoard."""
        if any(key in metrics for key in _RESERVED):
            raise ValueError(f"metric names {_RESERVED} are reserved")
        step = int(step)
        scalars = {key: _to_json_scalar(key, value) for key, value in metrics.items()}
        self.rows += 1
        if self._file is None:
            return
        line = {"step": step, "phase": phase, **({"tag": tag} if tag else {}), **scalars}
        self._file.write(json.dumps(line) + "\n")
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
