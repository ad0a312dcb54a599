"""Loss-curve pictures (matplotlib, Agg backend: files only, no display needed).

`plot_loss_curves` is shared with `minimind compare`; `plot_run` draws one run's
training curve (raw and smoothed) with its evaluation points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from minimind.atomic import atomic_open


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (same length as the input)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path) -> None:
    out_png = Path(out_png)
    with atomic_open(out_png, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")


def plot_loss_curves(series: dict[str, list[tuple[int, float]]], out_png: Path, title: str,
                     points: Optional[dict[str, list[tuple[int, float]]]] = None,
                     smooth_window: int = 0) -> Path:
    """One line per label (step, loss); optional markers per label (e.g. eval points)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for label, pairs in series.items():
            if not pairs:
                continue
            steps = [s for s, _ in pairs]
            losses = [v for _, v in pairs]
            if smooth_window > 1:
                losses = smooth(losses, smooth_window)
            ax.plot(steps, losses, label=label, linewidth=1.4)
        for label, pairs in (points or {}).items():
            if pairs:
                ax.plot([s for s, _ in pairs], [v for _, v in pairs], "o", label=label, markersize=5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        _save(fig, out_png)
    finally:
        plt.close(fig)
    return Path(out_png)


def plot_run(rows: list[dict], out_png: Path, title: str, window: int = 20) -> Path:
    """Training CE (raw, faint; smoothed) and validation loss points from metrics rows."""
    train = [(r["step"], r["loss_ce"]) for r in rows if isinstance(r.get("loss_ce"), (int, float))]
    evals = [(r["step"], r["eval/val_loss"]) for r in rows if isinstance(r.get("eval/val_loss"), (int, float))]
    smoothed = list(zip([s for s, _ in train], smooth([v for _, v in train], window))) if train else []
    return plot_loss_curves({"train (raw)": train, f"train (mean of {window})": smoothed}, out_png, title,
                            points={"validation": evals})
