"""Training curves from `metrics.jsonl` to one PNG (matplotlib, no pyplot, works headless)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from jaxrl_llm.train.metrics import read_metrics
from jaxrl_llm.train.workdir import atomic_open

Panel = tuple[str, Sequence[tuple[str, str]]]


def plot_curves(
    metrics_jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    panels: Sequence[Panel],
    title: str | None = None,
) -> str:
    """Draws one subplot per panel `(panel_title, [(phase, key), ...])`, x = step; returns the path.

    Curves whose key never appears are skipped; an empty panel says "no data". The PNG replaces
    `out_png` whole (written to `out_png + '.tmp'` first).

    Example:
      plot_curves(workdir + "/metrics.jsonl", workdir + "/curves.png", [
          ("reward / accuracy", [("train", "reward_mean"), ("eval", "greedy_accuracy")]),
          ("loss", [("train", "loss")]),
      ])
    """
    # Imported here, not at the top: matplotlib adds ~15-20 MB to every process that imports the
    # trainer, and is needed only when the curves are drawn at the end of a run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_jsonl_path)
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas without touching pyplot's global backend
    for index, (panel_title, curves) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        for phase, key in curves:
            points = [
                (r["step"], r[key]) for r in records if r.get("phase") == phase and r.get(key) is not None
            ]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps, values, marker="o" if len(points) <= 30 else None, ms=3, label=f"{phase}/{key}"
                )
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_jsonl_path))))
    out_png = os.fspath(out_png)
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return out_png
