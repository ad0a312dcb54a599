"""Loss-curve pictures (matplotlib, Agg backend: files only, no display needed).

`plot_loss_curves` is shared with `minimind compare`; `plot_run` draws one run's
training curve (raw and smoothed) with its evaluation points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

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


# The picture's words in the record's language.
LABELS = {
    "en": {"x": "step", "y": "loss", "raw": "train (raw)", "mean": "train (mean of {n})", "val": "validation",
           "title": "{v}: training loss", "seed": "seed {s} (mean of {n})", "seeds": "{v}: training loss, {k} seeds"},
    "zh": {"x": "步数", "y": "损失", "raw": "训练(原始)", "mean": "训练(最近 {n} 步均值)", "val": "验证",
           "title": "{v}:训练损失", "seed": "种子 {s}(最近 {n} 步均值)", "seeds": "{v}:训练损失,{k} 个种子"},
}
# Fonts with Chinese glyphs, tried in order; matplotlib's default has none and would draw boxes.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


def _cjk_fonts() -> list[str]:
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in have]


def plot_loss_curves(series: dict[str, list[tuple[int, float]]], out_png: Path, title: str,
                     points: Optional[dict[str, list[tuple[int, float]]]] = None,
                     smooth_window: int = 0, lang: str = "en") -> Path:
    """One line per label (step, loss); optional markers per label (e.g. eval points)."""
    plt = _pyplot()
    fonts = _cjk_fonts() if lang == "zh" else []
    with plt.rc_context({"font.sans-serif": [*fonts, *plt.rcParams["font.sans-serif"]]} if fonts else {}):
        return _draw(plt, series, out_png, title, points, smooth_window, LABELS[_drawn_lang(lang)])


def _drawn_lang(lang: str) -> str:
    """zh when a font can draw it; without one, English words rather than boxes."""
    return "zh" if lang == "zh" and _cjk_fonts() else "en"


def _draw(plt, series, out_png, title, points, smooth_window, words) -> Path:
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
        ax.set_xlabel(words["x"])
        ax.set_ylabel(words["y"])
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        _save(fig, out_png)
    finally:
        plt.close(fig)
    return Path(out_png)


def plot_run(rows: list[dict], out_png: Path, version: str, window: int = 20, lang: str = "en") -> Path:
    """Training CE (raw, faint; smoothed) and validation loss points from metrics rows, labelled in `lang`."""
    words = LABELS[_drawn_lang(lang)]
    train = [(r["step"], r["loss_ce"]) for r in rows if isinstance(r.get("loss_ce"), (int, float))]
    evals = [(r["step"], r["eval/val_loss"]) for r in rows if isinstance(r.get("eval/val_loss"), (int, float))]
    smoothed = list(zip([s for s, _ in train], smooth([v for _, v in train], window))) if train else []
    return plot_loss_curves({words["raw"]: train, words["mean"].format(n=window): smoothed}, out_png,
                            words["title"].format(v=version), points={words["val"]: evals}, lang=lang)


def plot_replicates(runs: dict[Any, list[dict]], out_png: Path, version: str, window: int = 20,
                    lang: str = "en") -> Path:
    """One smoothed training-loss curve per replicate ({seed: metrics rows}), with each one's
    validation points: the spread between the curves is the seed-to-seed noise."""
    words = LABELS[_drawn_lang(lang)]
    series, points = {}, {}
    for seed, rows in runs.items():
        train = [(r["step"], r["loss_ce"]) for r in rows if isinstance(r.get("loss_ce"), (int, float))]
        evals = [(r["step"], r["eval/val_loss"]) for r in rows if isinstance(r.get("eval/val_loss"), (int, float))]
        label = words["seed"].format(s=seed, n=window)
        series[label] = list(zip([s for s, _ in train], smooth([v for _, v in train], window))) if train else []
        if evals:
            points[f"{words['val']} {seed}"] = evals
    return plot_loss_curves(series, out_png, words["seeds"].format(v=version, k=len(runs)), points=points, lang=lang)
