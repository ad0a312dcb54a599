"""`minimind compare`: only the config keys that differ, metrics side by side, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from minimind.config import diff, flatten, load_config
from minimind.errors import UsageError
from minimind.guardrails import upgrade_eval
from minimind.lab import Lab
from minimind.rundir import CONFIG_FILE, EVAL_FILE, METRICS_FILE, read_json, read_metrics


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def compare_experiments(lab: Lab, versions: list[str], plot: Optional[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from minimind.verdict import bank_reading, compare_rows

    if len(versions) < 2:
        raise UsageError("compare needs at least two versions")
    run_dirs = {v: lab.require_run(v) for v in versions}
    configs = {v: load_config(run_dirs[v] / CONFIG_FILE).to_dict() for v in versions}
    evals = {v: upgrade_eval(read_json(run_dirs[v] / EVAL_FILE)) for v in versions}  # older: candidate entropy only
    console = Console()
    first = versions[0]
    for v in versions:  # an SFT experiment is read against the pretraining it started from
        init = configs[v].get("init")
        if configs[v].get("stage") == "sft" and init:
            console.print(f"{v}: sft, pretrain base {init['version']} ({init['checkpoint']}, step {init.get('step')}, "
                          f"sha256 {init['sha256'][:12]})", markup=False, highlight=False)
    confidence = lab.settings().eval.confidence

    keys = sorted({k for v in versions[1:] for k, _, _ in diff(configs[first], configs[v])})
    table = Table(title="Config differences")
    table.add_column("key")
    for v in versions:
        table.add_column(v)
    flat = {v: flatten(configs[v]) for v in versions}
    for key in keys:
        table.add_row(key, *(_fmt(flat[v].get(key)) for v in versions))
    console.print(table if keys else "No config differences.")

    metrics = Table(title=f"Metrics ({first} → each)")
    metrics.add_column("metric")
    for v in versions:
        metrics.add_column(v)
    names: list[str] = []
    rows_by_v = {v: {r["metric"]: r for r in compare_rows(evals[v], evals[first])} for v in versions[1:]}
    for r in compare_rows(evals[first], None):
        names.append(r["metric"])
    for v in versions[1:]:
        names += [n for n in rows_by_v[v] if n not in names]
    for name in names:
        cells = [_fmt((rows_by_v.get(versions[1], {}).get(name) or {}).get("base")) if len(versions) > 1 else "—"]
        for v in versions[1:]:
            row = rows_by_v[v].get(name)
            cells.append("—" if row is None else f"{_fmt(row['new'])} ({row['delta_text']})")
        metrics.add_row(name, *cells)
    if not any(evals.values()):
        console.print("No eval.json yet for these experiments.")
    else:
        console.print(metrics)
    for v in versions:  # the bank's own number: hit@C of the asked fact's entry against chance
        reading = bank_reading(evals[v], confidence)
        if reading:
            console.print(f"Bank reads of {v}: {reading['text']}", markup=False, highlight=False)

    series = {}
    for v in versions:
        points = [(r["step"], r["loss"]) for r in read_metrics(run_dirs[v] / METRICS_FILE)
                  if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int)]
        if points:
            series[v] = points
    if not series:
        console.print("No training metrics to plot.")
        return
    from training.plots import plot_loss_curves

    out = plot or lab.runs_dir / f"compare_{'_vs_'.join(versions)}.png"
    plot_loss_curves(series, Path(out), title=f"Training loss: {', '.join(versions)}")
    console.print(f"Loss curves: {out}")
