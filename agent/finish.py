"""The run script's last steps: record the training outcome, then analyse and draft the commit.

    python -m agent.finish --run-dir runs/V --outcome RC   # prints finished|stopped|guardrail_stopped|failed
    python -m agent.finish --run-dir runs/V --analyse      # analysis.json, commit_message.md, record

The training outcome comes from the trainer's own record in state.json as well as the
exit code, because `accelerate launch` reports any worker's non-zero exit as 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from minimind.atomic import write_json, write_text
from minimind.config import diff, load_config
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.state import FINAL_BY_TRAINER, read_state, update_state


def outcome(run_dir: Path, train_rc: int) -> str:
    """finished / stopped / guardrail_stopped / failed, recorded in state.json."""
    recorded = read_state(run_dir).get("state")
    if recorded in FINAL_BY_TRAINER:
        result = recorded
    elif train_rc == 0:
        result = "finished"
    else:
        result = "failed"
    changes = {"train_outcome": result, "phase": "evaluate" if result in ("finished", "guardrail_stopped") else "done"}
    if result in ("stopped", "failed"):
        changes["ended_at"] = time.time()
    update_state(run_dir, **changes)
    return result


def lab_of(run_dir: Path) -> Lab:
    return Lab(run_dir.resolve().parent.parent)


def analyse(run_dir: Path) -> None:
    """Fill the record's result sections and draft the commit message (PRODUCT.md section 1, step 5)."""
    from agent import backends
    from agent.base import AnalysisContext, CommitContext
    from agent.committing import experiment_files, render_commit_message
    from agent.record import (ANALYSIS_FILE, COMMIT_MSG_FILE, EVAL_FILE, METRICS_FILE, PLAN_FILE,
                              metrics_summary, read_json, read_metrics, write_record)
    from agent.verdict import VERDICT_ZH, compare_rows, decide, result_lines

    run_dir = run_dir.resolve()
    lab = lab_of(run_dir)
    settings = lab.settings()
    cfg = load_config(run_dir / "config.yaml")
    version = cfg.version
    plan = read_json(run_dir / PLAN_FILE) or {}
    ev = read_json(run_dir / EVAL_FILE)
    if ev is None:
        raise MinimindError(f"{run_dir / EVAL_FILE} is missing: evaluate first (minimind eval {version})")
    base_ev = read_json(lab.run_dir(cfg.base) / EVAL_FILE) if cfg.base else None
    base_cfg = read_json_yaml(lab.run_dir(cfg.base) / "config.yaml") if cfg.base else None
    state = read_state(run_dir)
    rows = compare_rows(ev, base_ev)
    levels = {n: g.get("level") for n, g in (ev.get("guardrails") or {}).items()}
    verdict, reason = decide(plan.get("hypothesis", ""), plan.get("expect"), ev, base_ev, levels)
    changes = diff(base_cfg or {}, cfg.to_dict()) if base_cfg else []
    lang = plan.get("lang", "en")
    requested = plan.get("agent_requested", settings.agent.backend)
    log_dir = run_dir / "agent"
    summary = metrics_summary(read_metrics(run_dir / METRICS_FILE), cfg.guardrails.smoothing_window)
    trimmed = {k: v for k, v in ev.items() if k != "samples"}
    trimmed["samples"] = (ev.get("samples") or [])[:3]
    ctx = AnalysisContext(version=version, base=cfg.base, goal=plan.get("goal", ""), hypothesis=plan.get("hypothesis", ""),
                          expect=plan.get("expect"), state=state.get("train_outcome") or state.get("state", ""),
                          stop_reason=state.get("stop_reason"), config_changes=changes, metrics_summary=summary,
                          eval=trimmed, base_eval=base_ev, comparison=rows, verdict=verdict, verdict_reason=reason, lang=lang)
    analysis, note = backends.call(requested, settings.agent, log_dir, "analyse", ctx)
    record = {
        "training_results": analysis.training_results, "inference_evaluation": analysis.inference_evaluation,
        "deep_analysis": analysis.deep_analysis, "conclusion": analysis.conclusion,
        "next_steps": list(analysis.next_steps), "backend": analysis.backend, "note": note,
        "verdict_info": {"verdict": verdict, "reason": reason, "verdict_zh": VERDICT_ZH[verdict]},
        "comparison": rows,
    }
    write_json(run_dir / ANALYSIS_FILE, record)

    files = experiment_files(lab, version)
    commit_ctx = CommitContext(version=version, goal=ctx.goal, hypothesis=ctx.hypothesis, verdict=verdict,
                               verdict_reason=reason, files=files, config_changes=changes,
                               result_lines=result_lines(rows, ev.get("guardrails") or {}, verdict, reason),
                               next_steps=list(analysis.next_steps), model_changed=bool(plan.get("model_changed")), lang=lang)
    draft, _ = backends.call(requested, settings.agent, log_dir, "draft_commit", commit_ctx)
    write_text(run_dir / COMMIT_MSG_FILE, render_commit_message(lab, draft, commit_ctx))
    ended = state.get("ended_at") or time.time()
    update_state(run_dir, analysed=True, phase="done", ended_at=ended)
    write_record(lab, version, lang)


def read_json_yaml(path: Path) -> Optional[dict]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def refresh_record(run_dir: Path) -> None:
    """Re-render the record's execution section; a failure here must not fail the run."""
    from agent.record import read_json, write_record

    plan = read_json(run_dir / "plan.json") or {}
    try:
        write_record(lab_of(run_dir), load_config(run_dir / "config.yaml").version, plan.get("lang", "en"))
    except (MinimindError, OSError) as exc:
        print(f"warning: record not refreshed: {exc}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.finish")
    parser.add_argument("--run-dir", required=True, type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--outcome", type=int, help="the training command's exit code")
    group.add_argument("--analyse", action="store_true")
    group.add_argument("--stopped", metavar="REASON", help="record a stop that came after training ended")
    args = parser.parse_args(argv)
    try:
        if args.outcome is not None:
            print(outcome(args.run_dir, args.outcome), flush=True)
            refresh_record(args.run_dir)
        elif args.stopped is not None:
            update_state(args.run_dir, state="stopped", stop_reason=args.stopped, phase="stopped", ended_at=time.time())
            refresh_record(args.run_dir)
        else:
            analyse(args.run_dir)
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
