"""`minimind status`: every experiment's honest state, or one in detail.

Reads only small files (state.json, exit_code, /proc) and imports nothing heavy, so it
stays fast with many experiments.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from minimind.formats import number
from minimind.guardrails import LIGHTS, NAMES as GUARDRAILS, upgrade_eval, upgrade_results
from minimind.lab import Lab
from minimind.rundir import (AGENT_DIR, EVAL_FILE, FLAGS, MISSING, TRAIN_LOG, UNREADABLE, current, has_state, is_stale,
                             read_json, replicate_dirs, run_label, state_note)


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def summary(lab: Lab, version: str) -> dict[str, Any]:
    """The experiment's row: for a replicated one, its state over every replicate
    (`running`, "2 of 3 done") and each replicate's own (lifecycle/knowledge/replicates.py)."""
    run_dir = lab.run_dir(version)
    out = _run_summary(lab, version, run_dir)
    runs = replicate_dirs(run_dir)
    out["state_words"] = None
    out["replicates"] = None
    if len(runs) > 1:
        from lifecycle.knowledge.replicates import aggregate, seed_of

        rows = [out] + [_run_summary(lab, version, r) for r in runs[1:]]
        for row, r in zip(rows, runs):
            row["label"], row["seed"] = run_label(r), seed_of(r)
        out = dict(out)
        out["state"], out["state_words"] = aggregate([r["state"] for r in rows], [r["evaluated"] for r in rows])
        out["replicates"] = [{k: row[k] for k in ("label", "seed", "state", "step", "total_steps", "loss", "phase",
                                                   "gpus", "queue_position", "waiting_for", "slurm_job", "pid",
                                                   "evaluated", "stop_reason")} for row in rows]
        out["stale_heartbeat"] = any(row["stale_heartbeat"] for row in rows)
        out["evaluated"] = all(row["evaluated"] for row in rows)
    return out


def _run_summary(lab: Lab, version: str, run_dir: Path) -> dict[str, Any]:
    derived, state = current(run_dir)
    guardrails = upgrade_results(state.guardrails)  # a run from before selection diversity: its entropy was the candidates'
    ev = upgrade_eval(read_json(run_dir / EVAL_FILE)) if (run_dir / EVAL_FILE).exists() else None
    if ev:
        guardrails.update(ev.get("guardrails") or {})
    return {
        "version": version,
        "base": state.base,
        "stage": state.stage or "pretrain",  # a state.json from before stages is a pretraining run
        "init": state.init or None,
        "state": derived,
        "recorded_state": state.state,
        "stale_heartbeat": derived == "running" and is_stale(state),
        "step": state.step,
        "total_steps": state.total_steps,
        "loss": state.last_loss,
        "eta_s": state.eta_s if derived == "running" else None,
        "pid": state.pid,
        "phase": state.phase,
        "stop_reason": state.stop_reason,
        "gpus": state.gpus if derived == "running" else None,
        "queue_position": state.queue_position if derived == "queued" else None,
        "waiting_for": state.waiting_for if derived == "queued" else None,
        "slurm_job": state.slurm_job,
        "slurm_jobs": state.slurm_jobs,
        "guardrails": {n: guardrails.get(n, {}) for n in GUARDRAILS},
        **{flag: bool(getattr(state, flag)) for flag in FLAGS},
        "analysis_failed": bool(state.analysis_failed),
        "analysis_error": state.analysis_error,
        # Where the state comes from when it is not this machine's state.json (a clone, a lost or corrupt file).
        "state_from": "state.json" if derived not in (MISSING, UNREADABLE) and has_state(run_dir)
        else ("commit" if derived not in (MISSING, UNREADABLE) else None),
        "state_note": state_note(run_dir),
    }


def show_status(lab: Lab, version: str | None, as_json: bool) -> None:
    if version is not None:
        lab.require_run(version)
        _detail(lab, version, as_json)
        return
    rows = [summary(lab, v) for v in lab.versions()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _table(rows)
    for line in waiting_code(lab):
        print(line)


def waiting_code(lab: Lab) -> list[str]:
    """The code changes waiting for the human's approval (runs/.pending/V): such an experiment
    has no run folder yet, so the table cannot show it."""
    from minimind.rundir import CODE_CHANGE_FILE, PENDING_DIR

    out = []
    for folder in sorted((lab.runs_dir / PENDING_DIR).glob("*")):
        data = read_json(folder / CODE_CHANGE_FILE)
        if not data or (lab.run_dir(folder.name)).exists():
            continue
        sha = str(data.get("sha256", ""))[:12]
        rejected = sum(1 for r in data.get("rounds", []) if r.get("kind") == "rejection")
        agent = data.get("source") == "agent"
        out.append(f"{folder.name}: drafted, its code change ({'the agent' if agent else 'your patch'}, sha256 {sha}"
                   + (f", revised after {rejected} rejection(s)" if rejected else "")
                   + f") waits for your approval in runs/{PENDING_DIR}/{folder.name}: run its new again with "
                   f"--approve-code {sha}" + (" or --reject-code NOTE" if agent else ""))
    return out


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("No experiments yet. Start one: minimind new 0.1.0 --goal ... --hypothesis ...")
        return
    console_width = console.width  # the terminal's (COLUMNS when not a terminal)
    # Nine columns at 80 folded 'finished' into 'finish…' and the lights onto two lines (a walk
    # through the README found it): a narrow terminal loses the stage column (an SFT run says
    # so after its version) and the spaces between the lights, and keeps every cell whole.
    wide = console_width >= 110
    table = Table(title="minimind experiments")
    for column in (("version", "stage", "base", "state", "step", "loss", "ETA", "guardrails", "E A R C") if wide
                   else ("version", "base", "state", "step", "loss", "ETA", "lights", "EARC")):
        # only the state and the step (an evaluation's phase) may wrap: at 80 columns a whole
        # 'evaluate: recall 188/1200' pushed the table past the edge, where it is cropped
        table.add_column(column, no_wrap=column not in ("state", "step"), overflow="fold",
                         min_width=9 if column == "state" else None)
    colours = {"running": "cyan", "finished": "green", "failed": "red", "lost": "red", "stopped": "yellow",
               "guardrail_stopped": "magenta", "drafted": "dim", "queued": "blue", MISSING: "red", UNREADABLE: "red"}
    for row in rows:
        step = f"{row['step'] or 0}/{row['total_steps']}" if row["total_steps"] else ""
        if row["state"] == "running" and str(row["phase"] or "").startswith("evaluate"):
            step = row["phase"]  # training is over: which part of the evaluation, and how far (training.evaluate)
            row = {**row, "eta_s": None}  # the training's ETA (0 s) says nothing about the evaluation
        loss = f"{row['loss']:.4f}" if isinstance(row["loss"], (int, float)) else ""
        lights = (" " if wide else "").join(LIGHTS.get(row["guardrails"][n].get("level"), "⚪") for n in GUARDRAILS)
        flags = (" " if wide else "").join("✗" if f == "analysed" and row["analysis_failed"] else ("✓" if row[f] else "·")
                                           for f in FLAGS)
        state = ((row["state"] if wide else row["state"].replace("_", " "))  # 'guardrail stopped' wraps at its space
                 + (f" ({row['state_words']})" if row["state_words"] else "")
                 + (" (stale)" if row["stale_heartbeat"] else "") + _where(row)
                 + ("*" if row["state_from"] == "commit" else ""))
        cells = [row["version"], row["stage"], row["base"] or "", f"[{colours.get(row['state'], 'white')}]{state}[/]",
                 step, loss, _eta(row["eta_s"]), lights, flags]
        if not wide:
            del cells[1]
            cells[0] += f" {row['stage']}" if row["stage"] and row["stage"] != "pretrain" else ""
        table.add_row(*cells)
    console.print(table)
    for row in rows:  # each replicate of a replicated experiment that is not done, on its own line
        for rep in row["replicates"] or []:
            if rep["state"] != "finished":
                console.print(f"  {_replicate_line(rep)}", markup=False, highlight=False)
    for row in rows:  # a lost or corrupt state.json is said per experiment, never papered over
        if row["state"] in (MISSING, UNREADABLE):
            console.print(f"[red]{row['version']}: {row['state_note']}[/]", highlight=False)
    if any(row["state_from"] == "commit" for row in rows):
        console.print("* as committed: this copy has no state.json for these experiments (a clone): "
                      "their state is the one committed with them (state.committed.json)", highlight=False)
    console.print("guardrail lights: train loss · train/inference ratio · repetition · memory selection entropy   "
                  "(🟢 safe 🟡 watch 🔴 danger ⚪ not measured)   flags: evaluated analysed reviewed committed "
                  "(✗ analysis failed: minimind analyse VERSION)")


def _replicate_line(rep: dict) -> str:
    step = f" step {rep['step'] or 0}/{rep['total_steps']}" if rep["total_steps"] else ""
    loss = f" loss {rep['loss']:.4f}" if isinstance(rep["loss"], (int, float)) else ""
    why = f" ({rep['stop_reason']})" if rep["stop_reason"] and rep["state"] != "running" else ""
    return f"{rep['label']} (seed {rep['seed']}): {rep['state']}{why}{_where(rep)}{step}{loss}"


def _where(row: dict) -> str:
    """Where a run is: its GPU slots, its place in the queue and what it waits for, its Slurm job."""
    parts = []
    if row["slurm_job"]:
        parts.append(f"slurm {row['slurm_job']}")
    if row["gpus"]:
        parts.append("GPU " + ",".join(map(str, row["gpus"])))
    if row["queue_position"]:
        parts.append(f"#{row['queue_position']}, waits for {row['waiting_for']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in deque(handle, maxlen=n)]
    except FileNotFoundError:
        return []


def _detail(lab: Lab, version: str, as_json: bool) -> None:
    from agent.calllog import failed_attempt_logs, summary_of

    run_dir = lab.run_dir(version)
    info = summary(lab, version)
    _, state = current(run_dir)
    info["started_at"] = state.started_at
    info["ended_at"] = state.ended_at
    info["snapshot"] = state.snapshot
    info["git"] = state.git
    # The spend of every attempt of this version, failed `new` attempts included (one budget).
    info["agent"] = {"backend": state.agent_backend,
                     **summary_of([run_dir / AGENT_DIR, *failed_attempt_logs(lab.runs_dir, version)])}
    info["log_tail"] = _tail(run_dir / TRAIN_LOG, 10)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(f"[bold]Experiment {version}[/]  state: [bold]{info['state']}[/]"
                  + (f" ({info['state_words']})" if info["state_words"] else "")
                  + (f" ({info['stop_reason']})" if info["stop_reason"] and not info["replicates"] else ""))
    if info["replicates"]:
        console.print(f"replicates: {len(info['replicates'])} (name one as {version}@SEED in stop, resume, log, eval)",
                      highlight=False)
        for rep in info["replicates"]:
            console.print(f"  {_replicate_line(rep)}", markup=False, highlight=False)
    if info["state_note"]:
        console.print(f"[{'red' if info['state'] in (MISSING, UNREADABLE) else 'yellow'}]{info['state_note']}[/]",
                      highlight=False)
    if info["gpus"] or info["queue_position"] or info["slurm_job"]:
        console.print("where: " + _where(info).strip(" ()")
                      + (f" · Slurm jobs {', '.join(info['slurm_jobs'])}" if len(info["slurm_jobs"]) > 1 else ""),
                      markup=False, highlight=False)
    if info["stale_heartbeat"]:
        console.print(f"[yellow]No heartbeat for over {int(time.time() - (state.heartbeat or 0))} s: the process is alive but may be hung.[/]")
    if info["init"]:
        console.print(f"stage sft from {info['init'].get('version')}: {info['init'].get('checkpoint')} "
                      f"(sha256 {str(info['init'].get('sha256'))[:12]})", markup=False, highlight=False)
    console.print(f"base {info['base'] or '—'} · stage {info['stage']} · pid {info['pid'] or '—'} · step {info['step'] or 0}/{info['total_steps'] or '—'}"
                  f" · loss {number(info['loss'])} · ETA {_eta(info['eta_s']) or '—'} · phase {info['phase'] or '—'}")
    for name in GUARDRAILS:
        g = info["guardrails"][name]
        candidates = (f" · candidate-softmax entropy {number(g['candidate_entropy'])} (not judged)"
                      if g.get("candidate_entropy") is not None else "")
        console.print(f"  {LIGHTS.get(g.get('level'), '⚪')} {name}: {number(g.get('value'))} ({g.get('level', 'not measured')})"
                      + candidates)
    console.print("flags: " + ", ".join(f"{f} {'yes' if info[f] else 'no'}" for f in FLAGS))
    if info["analysis_failed"]:
        console.print(f"[yellow]analysis failed: {info['analysis_error']}[/] — training is {info['state']}; "
                      f"redo it with: minimind analyse {version}", markup=True, highlight=False)
    agent = info["agent"]
    console.print(f"agent: {agent['backend'] or '—'}, {agent['calls']} call(s), ${agent['cost_usd']:.4f}")
    if info["log_tail"]:
        console.print("[dim]last log lines:[/]")
        for line in info["log_tail"]:
            console.print("  " + line, markup=False, highlight=False)
