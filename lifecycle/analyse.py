"""The analysis step: verdict (code), prose (the agent), commit draft, record.

Run by the pipeline after evaluation, and by `minimind eval VERSION`. Everything it reads
is in the run directory (config, plan, eval.json, metrics.jsonl) and the base's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from minimind.atomic import write_json, write_text
from minimind.config import diff, load_config
from minimind.errors import MinimindError
from minimind.guardrails import rules_of
from minimind.lab import Lab
from minimind.rundir import (AGENT_DIR, ANALYSIS_FILE, COMMIT_MSG_FILE, CONFIG_FILE, EVAL_FILE, METRICS_FILE,
                             PLAN_FILE, read_json, read_metrics, read_state, update_state)


def lab_of(run_dir: Path) -> Lab:
    return Lab(Path(run_dir).resolve().parent.parent)


def analyse(run_dir: Path) -> None:
    """Fill the record's result sections and draft the commit message (PRODUCT.md section 1, step 5)."""
    from agent import backends
    from agent.base import AnalysisContext, CommitContext
    from lifecycle.commit import experiment_files, render_commit_message
    from lifecycle.record import metrics_summary, write_record
    from minimind.verdict import VERDICT_ZH, compare_rows, decide, result_lines

    run_dir = Path(run_dir).resolve()
    lab = lab_of(run_dir)
    settings = lab.settings()
    cfg = load_config(run_dir / CONFIG_FILE)
    version = cfg.version
    plan = read_json(run_dir / PLAN_FILE) or {}
    ev = read_json(run_dir / EVAL_FILE)
    if ev is None:
        raise MinimindError(f"{run_dir / EVAL_FILE} is missing: evaluate first (minimind eval {version})")
    base_ev = read_json(lab.run_dir(cfg.base) / EVAL_FILE) if cfg.base else None
    base_cfg = _read_yaml(lab.run_dir(cfg.base) / CONFIG_FILE) if cfg.base else None
    state = read_state(run_dir)
    rows = compare_rows(ev, base_ev)
    levels = {n: g.get("level") for n, g in (ev.get("guardrails") or {}).items()}
    verdict, reason = decide(plan.get("hypothesis", ""), plan.get("expect"), ev, base_ev, levels)
    changes = diff(base_cfg or {}, cfg.to_dict()) if base_cfg else []
    lang = plan.get("lang", "en")
    requested = plan.get("agent_requested", settings.agent.backend)
    log_dir = run_dir / AGENT_DIR
    summary = metrics_summary(read_metrics(run_dir / METRICS_FILE), cfg.guardrails.smoothing_window)
    trimmed = {k: v for k, v in ev.items() if k != "samples"}
    trimmed["samples"] = (ev.get("samples") or [])[:3]
    ctx = AnalysisContext(version=version, base=cfg.base, goal=plan.get("goal", ""), hypothesis=plan.get("hypothesis", ""),
                          expect=plan.get("expect"), state=state.train_outcome or state.state,
                          stop_reason=state.stop_reason, config_changes=changes, metrics_summary=summary,
                          eval=trimmed, base_eval=base_ev, comparison=rows, verdict=verdict, verdict_reason=reason,
                          guardrails=rules_of(cfg.guardrails), lang=lang)
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
    update_state(run_dir, analysed=True, phase="done", ended_at=state.ended_at or time.time())
    write_record(lab, version, lang)


def _read_yaml(path: Path) -> Optional[dict]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
