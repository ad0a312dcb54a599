"""`minimind history [--json]`: the lab notebook (lifecycle/knowledge/notebook.py) at the terminal."""

from __future__ import annotations

import json

from lifecycle.knowledge.notebook import cell, noise_lines, recall_text, rows
from minimind.formats import number


def show_history(lab, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows(lab), ensure_ascii=False, indent=1, default=str))
        return
    # (--json keeps its list of rows for the scripts that read it; the floor is in INDEX.md and below.)
    from rich.console import Console
    from rich.table import Table

    console = Console()  # the terminal's width (COLUMNS when not a terminal)
    # Eleven columns fold into slivers on a narrow terminal ('refuted' became 'refu/ted' at
    # 80): there the table keeps what a row is looked up and judged by, whole, and says
    # where the rest is.
    wide = console.width >= 140
    names = ("version", "base", "goal", "change", "state", "verdict", "inference", "val", "recall P@1", "dangers",
             "next step") if wide else ("version", "base", "goal", "state", "verdict", "inference", "dangers")
    table = Table(title="lab notebook", caption=None if wide else
                  "change, verdict reasons, recall and next step: a terminal of 140 columns, `history --json` or experiment/INDEX.md")
    for name in names:
        # what a reader looks a row up by stays on one line; narrow, the verdict is its word alone
        whole = name in ("version", "base", "state", "inference") or (name == "verdict" and not wide)
        table.add_column(name, overflow="fold", no_wrap=whole, min_width={"verdict": 12, "state": 8}.get(name))
    for r in rows(lab):
        verdict = (f"{r['verdict']}{' ' + r['interval'] if r['interval'] and wide else ''}" if r["verdict"]
                   else "—")
        cells = {"version": r["version"], "base": r["base"] or "—", "goal": cell(r["goal"], 60),
                 "change": cell(r["change"], 50), "state": r["state"], "verdict": verdict,
                 "inference": number(r["inference_loss"]), "val": number(r["val_loss"]), "recall P@1": recall_text(r),
                 "dangers": ", ".join(r["dangers"]) or "none", "next step": cell(r["next_step"], 60)}
        table.add_row(*(cells[name] for name in names))
    console.print(table)  # long cells fold
    console.print("run-to-run noise (seed-to-seed spread per metric, and the experiments it was measured on):",
                  highlight=False)
    for line in noise_lines(lab):
        console.print(f"  {line}", markup=False, highlight=False)
