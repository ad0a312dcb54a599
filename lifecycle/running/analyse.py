"""The analysis step: verdict (code), prose (the agent), commit draft, record.

Run by the pipeline after evaluation, and by `minimind analyse VERSION` (only this step,
from the existing eval.json) and `minimind eval VERSION`. Everything it reads is in the
run directory (config, plan, eval.json, metrics.jsonl, model.diff) and the base's.

A failure of the agent here never fails a trained run: `run_analysis` records
`analysis_failed` and its reason in state.json, the training state stays what it was
(finished / guardrail_stopped), and `minimind analyse VERSION` completes it later.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from minimind.atomic import write_json, write_text
from minimind.config import FIXED_SECTIONS, diff, flatten, load_config
from minimind import formats
from minimind.errors import MinimindError
from minimind.guardrails import rules_of, upgrade_eval
from minimind.lab import Lab
from minimind.rundir import (AGENT_DIR, ANALYSIS_ERROR_LOG, ANALYSIS_FILE, COMMIT_MSG_FILE, CONFIG_FILE, DIFF_FILE, EVAL_FILE,
                             METRICS_FILE, NEXT_FILE, PLAN_FILE, read_json, read_metrics, read_state, update_state)

CURVE_POINTS = 16        # points per curve shown to the agent
SAMPLES = 5              # samples shown to the agent
_CURVE_KEY = re.compile(r"^(loss|loss_ce|eval/.+|memory/(l\d+/)?(selection_entropy|selection_distinct|candidate_entropy|entropy|coverage|dead))$")


def downsample(points: list[list[float]], limit: int = CURVE_POINTS) -> list[list[float]]:
    """At most `limit` points, evenly spaced, always keeping the first and the last."""
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def curves(rows: list[dict]) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of train loss, periodic evals and memory stats per layer."""
    out: dict[str, list[list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if _CURVE_KEY.match(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append([step, value])
    return {k: downsample(v) for k, v in out.items()}


def guardrail_history(rows: list[dict]) -> list[dict[str, Any]]:
    """Every level change the trainer logged: [{step, name, from, to, value}]."""
    out = []
    for row in rows:
        for name, change in (row.get("guardrail_changes") or {}).items():
            if isinstance(change, dict):
                out.append({"step": row.get("step"), "name": name, "from": change.get("from"),
                            "to": change.get("to"), "value": change.get("value")})
    return out


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")


def _enclosing(lines: list[str], index: int) -> Optional[str]:
    """'MemoryLayer.forward' for line `index` (0-based) of a Python source, None at module level."""
    names, indent = [], None
    for line in reversed(lines[: index + 1]):
        m = _DEF.match(line)
        if m and (indent is None or len(m.group(1)) < indent):
            names.append(m.group(3))
            indent = len(m.group(1))
            if indent == 0:
                break
    return ".".join(reversed(names)) or None


def changed_symbols(diff_text: str, old_source: str, new_source: str) -> list[str]:
    """The functions and classes a unified diff of models/model.py changes, in file order:
    removed lines are looked up in the old source, added ones in the new."""
    old_lines, new_lines = old_source.splitlines(), new_source.splitlines()
    found: list[str] = []
    old_no = new_no = 0
    for line in diff_text.splitlines():
        m = _HUNK.match(line)
        if m:
            old_no, new_no = int(m.group(1)) - 1, int(m.group(3)) - 1
            continue
        if line.startswith(("+++", "---")):
            continue
        name = None
        if line.startswith("-"):
            name = _enclosing(old_lines, old_no)
            old_no += 1
        elif line.startswith("+"):
            name = _enclosing(new_lines, new_no)
            new_no += 1
        else:
            old_no, new_no = old_no + 1, new_no + 1
        if name and name not in found:
            found.append(name)
    return found


def real_changes(base_cfg: Optional[dict], new_cfg: dict, plan: Optional[dict] = None) -> list[tuple[str, Any, Any]]:
    """(key, base, new) for values that differ from the base (equal values are not a change);
    a first run (no base) changed what its plan changed from the lab defaults."""
    if not base_cfg:
        return [(c["key"], c.get("base"), c.get("new")) for c in (plan or {}).get("changes") or []]
    return [(k, a, b) for k, a, b in diff(base_cfg, new_cfg) if a != b]


def fixed_settings(cfg_dict: dict) -> dict[str, Any]:
    flat = flatten({k: cfg_dict.get(k) for k in FIXED_SECTIONS if isinstance(cfg_dict.get(k), dict)})
    return {k: v for k, v in flat.items() if v is not None}


@dataclass
class Facts:
    """Everything the analysis decides from, computed by code before the agent is asked anything."""
    lab: Lab
    run_dir: Path
    cfg: Any                         # the run's ExperimentConfig
    plan: dict[str, Any]
    ev: dict[str, Any]
    lang: str
    rows: list[dict[str, Any]]       # the comparison with the base (minimind.verdict)
    verdict: str
    reason: str
    control: Any                     # the held-out control
    reading: Any                     # the bank reading
    floors: dict[str, Any]           # the lab's measured seed-to-seed noise
    seeds: Optional[dict[str, Any]]  # the replicates' summary, None for a lone run
    changes: list[tuple[str, Any, Any]]
    summary: dict[str, Any]          # the training metrics, summarised
    diff_text: str
    causes: list[dict]
    context: Any                     # the agent's AnalysisContext
    backend: str                     # the agent backend asked for
    prior: list[Path]                # earlier failed attempts' call logs (their spend counts)
    ended_at: Optional[float]        # when training ended, as state.json said before the analysis


def analyse(run_dir: Path, agent: Optional[str] = None) -> Path:
    """Fill the record's result sections and draft the commit message (PRODUCT.md section 1, step 5):
    the facts (code), the agent's prose and commit draft, then the files.

    Returns where the record went (the record, or the render beside a human-edited one)."""
    facts = _facts(Path(run_dir).resolve(), agent)
    record, draft, commit_ctx = _ask_agent(facts)
    return _write(facts, record, draft, commit_ctx)


def _facts(run_dir: Path, agent: Optional[str]) -> Facts:
    """The verdict, the comparison and the agent's context, all from the run directory and the base's."""
    from agent.base import AnalysisContext, lessons_text
    from agent.calllog import failed_attempt_logs
    from lifecycle.document.record import code_change_brief, metrics_summary
    from lifecycle.knowledge import lessons, notebook, replicates
    from minimind.verdict import bank_reading, compare_rows, decide, held_out_control
    from models.registry import memory_presets

    lab = Lab.of_run(run_dir)
    settings = lab.settings()
    cfg = load_config(run_dir / CONFIG_FILE)
    version = cfg.version
    plan = read_json(run_dir / PLAN_FILE) or {}
    ev = upgrade_eval(read_json(run_dir / EVAL_FILE))
    if ev is None:
        raise MinimindError(f"{run_dir / EVAL_FILE} is missing: evaluate first (minimind eval {version})")
    base_ev = upgrade_eval(read_json(lab.run_dir(cfg.base) / EVAL_FILE)) if cfg.base else None
    base_cfg = _read_yaml(lab.run_dir(cfg.base) / CONFIG_FILE) if cfg.base else None
    state = read_state(run_dir)
    confidence = cfg.eval.confidence
    lang = plan.get("lang", "en")
    # Each side is every evaluated replicate (one run for an unreplicated experiment); the lab's
    # measured seed-to-seed floor stands in for a side's missing replicates (minimind/noise.py).
    seeds = None
    if replicates.replicated(run_dir):
        seeds = replicates.write_summary(run_dir)
        _plot_replicates(run_dir, version, cfg.guardrails.smoothing_window, lang)
    new_side, base_side, floors = replicates.verdict_inputs(lab, run_dir, cfg, ev)
    rows = compare_rows(new_side, base_side, confidence, cfg.eval.min_effect, floors)
    control = held_out_control(ev, base_ev, confidence, lang)
    reading = bank_reading(ev, confidence, lang)
    levels = {n: g.get("level") for n, g in (ev.get("guardrails") or {}).items()}
    verdict, reason = decide(plan.get("hypothesis", ""), plan.get("expect"), new_side, base_side, levels, confidence,
                             cfg.eval.min_effect, lang, floors, cfg.base)
    changes = real_changes(base_cfg, cfg.to_dict(), plan)
    metric_rows = read_metrics(run_dir / METRICS_FILE)
    summary = metrics_summary(metric_rows, cfg.guardrails.smoothing_window)
    diff_text = (run_dir / DIFF_FILE).read_text(encoding="utf-8") if (run_dir / DIFF_FILE).exists() else ""
    samples = [{k: s.get(k) for k in ("prompt", "reference", "generated", "repetition")}
               for s in (ev.get("samples") or [])[:SAMPLES]]
    found = run_causes(plan, cfg.to_dict(), ev, base_ev, changes, diff_text)
    ctx = AnalysisContext(version=version, base=cfg.base, goal=plan.get("goal", ""), hypothesis=plan.get("hypothesis", ""),
                          expect=plan.get("expect"), state=state.train_outcome or state.state,
                          stop_reason=state.stop_reason, config_changes=changes, metrics_summary=summary,
                          eval=_eval_view(ev), base_eval=_eval_view(base_ev) if base_ev else None, comparison=rows,
                          verdict=verdict, verdict_reason=reason, guardrails=rules_of(cfg.guardrails),
                          memory_presets=memory_presets(lab.models_dir, cfg.model_module), lang=lang,
                          plan={k: plan.get(k) for k in ("thinking", "expected", "risks", "changes")},
                          model_diff=formats.bounded_diff(diff_text),
                          code_change=code_change_brief(run_dir),  # a code experiment: each hunk's reason, beside the diff
                          curves=curves(metric_rows), guardrail_history=guardrail_history(metric_rows), samples=samples,
                          intervals={"confidence": confidence, "held_out_control": control,
                                     "retrieval": ev.get("retrieval"), "bank_reading": reading},
                          fixed_settings=fixed_settings(cfg.to_dict()), model_config=dict(cfg.model),
                          notebook=notebook.trace(lab, exclude=version),
                          lessons=lessons_text(rules_of(cfg.guardrails), lessons.lines(lab, lang)),
                          config_schema=_next_schema(lab), versions=lab.versions(), causes=found,
                          stage=cfg.stage)
    return Facts(lab=lab, run_dir=run_dir, cfg=cfg, plan=plan, ev=ev, lang=lang, rows=rows, verdict=verdict,
                 reason=reason, control=control, reading=reading, floors=floors, seeds=seeds, changes=changes,
                 summary=summary, diff_text=diff_text, causes=found, context=ctx,
                 backend=agent or plan.get("agent_requested", settings.agent.backend),
                 prior=failed_attempt_logs(lab.runs_dir, version), ended_at=state.ended_at)


def _ask_agent(facts: Facts):
    """The agent's two calls: the analysis prose, then the commit draft; (analysis.json's record,
    the draft, the commit context)."""
    from agent import backends
    from agent.base import CommitContext
    from lifecycle.document.draft import experiment_files
    from minimind.verdict import VERDICT_ZH, result_lines

    lab, ctx, version, lang = facts.lab, facts.context, facts.cfg.version, facts.lang
    agent_settings, log_dir = lab.settings().agent, facts.run_dir / AGENT_DIR
    analysis, note = backends.call(facts.backend, agent_settings, log_dir, "analyse", ctx, facts.prior)
    record = {
        "training_results": analysis.training_results, "inference_evaluation": analysis.inference_evaluation,
        "deep_analysis": analysis.deep_analysis, "conclusion": analysis.conclusion,
        "next_steps": list(analysis.next_steps), "backend": analysis.backend, "note": note,
        "notes": list(analysis.notes),
        "verdict_info": {"verdict": facts.verdict, "reason": facts.reason, "verdict_zh": VERDICT_ZH[facts.verdict],
                         "confidence": facts.cfg.eval.confidence},
        "noise": {"floors": {m: f.to_dict() for m, f in facts.floors.items()}, "seeds": facts.seeds},
        "comparison": facts.rows,
        "held_out_control": facts.control,
        "bank_reading": facts.reading,
    }
    # Fields issue-level extensions add to Analysis (e.g. a structured proposal) are kept as they come.
    for fld in dataclasses.fields(analysis):
        record.setdefault(fld.name, getattr(analysis, fld.name))
    record["notes"] += _remember(lab, facts.run_dir, version, facts.cfg.to_dict(), facts.plan, facts.ev, facts.verdict,
                                 facts.reason, facts.changes, analysis, lang, facts.causes)
    lines = result_lines(facts.rows, facts.ev.get("guardrails") or {}, facts.verdict, facts.reason,
                         control=facts.control, lang=lang, reading=facts.reading)
    commit_ctx = CommitContext(version=version, goal=ctx.goal, hypothesis=ctx.hypothesis, verdict=facts.verdict,
                               verdict_reason=facts.reason, files=experiment_files(lab, version),
                               config_changes=facts.changes, result_lines=lines,
                               next_steps=list(analysis.next_steps), model_changed=bool(facts.diff_text.strip()),
                               lang=lang, model_diff=ctx.model_diff, plan=ctx.plan,
                               changed_symbols=_diff_symbols(lab, facts.cfg.base, version, facts.diff_text),
                               code_change=ctx.code_change,
                               facts={"comparison": facts.rows, "eval": ctx.eval, "base_eval": ctx.base_eval,
                                      "metrics": facts.summary, "held_out_control": facts.control,
                                      "bank_reading": facts.reading, "causes": facts.causes})
    draft, commit_note = backends.call(facts.backend, agent_settings, log_dir, "draft_commit", commit_ctx, facts.prior)
    record["commit_notes"] = list(draft.notes)
    if commit_note:
        record["commit_note"] = commit_note
    return record, draft, commit_ctx


def _write(facts: Facts, record: dict[str, Any], draft: Any, commit_ctx: Any) -> Path:
    """analysis.json, the notebook row, the commit message and the record; the run marked analysed."""
    from lifecycle.document.draft import render_commit_message
    from lifecycle.document.record import write_record
    from lifecycle.knowledge.notebook import write_index

    run_dir, lab = facts.run_dir, facts.lab
    write_json(run_dir / ANALYSIS_FILE, record)
    write_index(lab)  # the notebook row of this experiment now has its verdict
    write_text(run_dir / COMMIT_MSG_FILE, render_commit_message(lab, draft, commit_ctx))
    update_state(run_dir, analysed=True, analysis_failed=False, analysis_error=None, phase="done",
                 ended_at=facts.ended_at or time.time())
    return write_record(lab, facts.cfg.version, facts.lang)


def _plot_replicates(run_dir: Path, version: str, window: int, lang: str) -> None:
    """runs/V/plots/loss.png of a replicated experiment: a curve per replicate (it replaces the
    first replicate's own picture, which its evaluation drew)."""
    from lifecycle.knowledge.replicates import seed_of
    from minimind.rundir import PLOTS_DIR, replicate_dirs
    from training.plots import plot_replicates

    runs = {seed_of(d): read_metrics(d / METRICS_FILE) for d in replicate_dirs(run_dir)}
    if any(runs.values()):
        plot_replicates(runs, run_dir / PLOTS_DIR / "loss.png", version, window, lang)


def _failure_reason(run_dir: Path, exc: Exception) -> str:
    """The one-line reason of a failed analysis. A MinimindError's message is the reason;
    any other exception is a bug somewhere below (the agent, a validator, the analysis
    code): its traceback is appended to runs/V/analysis_error.log and the reason points there."""
    if isinstance(exc, MinimindError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    import traceback

    log = Path(run_dir) / ANALYSIS_ERROR_LOG
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"--- analysis failed {stamp}\n{text}\n")
    except OSError:
        pass  # the reason is still recorded in state.json
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return (f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")
            + f" (traceback in runs/{Path(run_dir).name}/{ANALYSIS_ERROR_LOG})")


def run_analysis(run_dir: Path, agent: Optional[str] = None) -> tuple[bool, str]:
    """`analyse`, with a failure recorded as `analysis_failed` (training's state untouched).

    Any exception counts, not only MinimindError: training's result is on disk and nothing
    the analysis does may turn a trained run into a failed one.
    Returns (ok, message): where the record went, or why the analysis failed."""
    from lifecycle.document.record import write_record

    run_dir = Path(run_dir).resolve()
    try:
        path = analyse(run_dir, agent)
    except Exception as exc:  # noqa: BLE001 -- see the docstring
        reason = _failure_reason(run_dir, exc)
        if not isinstance(exc, MinimindError):
            import traceback

            traceback.print_exc()  # the pipeline's stderr is train.log
        update_state(run_dir, analysis_failed=True, analysis_error=reason, phase="done")
        try:
            plan = read_json(run_dir / PLAN_FILE) or {}
            write_record(Lab.of_run(run_dir), load_config(run_dir / CONFIG_FILE).version, plan.get("lang", "en"))
        except (MinimindError, OSError):
            pass  # the flag and the reason are recorded; the record follows with the next render
        return False, reason
    lab = Lab.of_run(run_dir)
    return True, str(path.relative_to(lab.root))


def analyse_experiment(lab: Lab, version: str, agent: Optional[str] = None) -> str:
    """`minimind analyse VERSION`: redo only the analysis, the record and the commit draft
    from the existing eval.json (no training, no evaluation)."""
    from minimind.rundir import current

    run_dir = lab.require_run(version)
    derived, state = current(run_dir)
    if derived == "running" and not state.train_outcome:
        raise MinimindError(f"experiment {version} is still training; it is analysed when training ends")
    if not (run_dir / EVAL_FILE).exists():
        raise MinimindError(f"experiment {version} has no {EVAL_FILE}: run 'minimind eval {version}' first")
    try:
        path = analyse(run_dir, agent)
    except MinimindError as exc:
        update_state(run_dir, analysis_failed=True, analysis_error=_failure_reason(run_dir, exc))
        raise
    except Exception as exc:  # noqa: BLE001 -- a bug below: one line here, the traceback in the log
        reason = _failure_reason(run_dir, exc)
        update_state(run_dir, analysis_failed=True, analysis_error=reason)
        raise MinimindError(f"the analysis of {version} failed: {reason}") from exc
    record = path.relative_to(lab.root)
    verdict = ((read_json(run_dir / ANALYSIS_FILE) or {}).get("verdict_info") or {}).get("verdict", "?")
    where = (f"record {record}" if path == lab.record_path(version)
             else f"the record was edited by hand and could not be merged safely; the new render is {record}")
    return f"Analysed {version}: hypothesis {verdict}; {where}; commit message runs/{version}/{COMMIT_MSG_FILE}"


def _diff_symbols(lab: Lab, base: Optional[str], version: str, diff_text: str) -> list[str]:
    """changed_symbols of this run's model.diff, against the sources it was made from (the
    base snapshot, or git HEAD for a first experiment) and this run's snapshot."""
    if not diff_text.strip():
        return []
    new_path = lab.snapshot_path(version)
    old_path = lab.snapshot_path(base) if base else None
    new_source = new_path.read_text(encoding="utf-8") if new_path.exists() else ""
    if old_path is not None and old_path.exists():
        old_source = old_path.read_text(encoding="utf-8")
    else:
        from lifecycle.document import gitops

        old_source = gitops.file_at_head(lab.root, "models/model.py") or ""
    return changed_symbols(diff_text, old_source, new_source)


def _eval_view(ev: Optional[dict]) -> Optional[dict]:
    """eval.json without what is not evidence: per-item raw data, the model config (in the
    config already), the checkpoint's absolute path, timestamps, and samples (given apart)."""
    if ev is None:
        return None
    return {k: v for k, v in ev.items() if k not in ("per_item", "model_config", "checkpoint", "time", "samples")}


def _next_schema(lab: Lab) -> dict[str, dict]:
    """The keys a proposed next experiment may set: the living model's and the trainer's
    (what `new --from-proposal` will validate them against)."""
    from minimind.config import agent_schema
    from models.registry import model_schema

    try:
        return agent_schema(model_schema(lab)[1])
    except MinimindError:
        return {}  # no living model file: a model's proposal is refused, the rules still propose


def run_causes(plan: dict, cfg: dict, ev: dict, base_ev: Optional[dict], changes: list, diff_text: str) -> list[dict]:
    """The causes of this run's result that its data supports (minimind/causes.py)."""
    from minimind import causes

    base_levels = (base_ev.get("guardrails") or {}) if base_ev else None
    return causes.find(preflight=plan.get("preflight"), levels=ev.get("guardrails") or {}, base_levels=base_levels,
                       changed=bool(changes or diff_text.strip()), train_loss=ev.get("train_loss"),
                       vocab_size=(cfg.get("model") or {}).get("vocab_size"))


# What the record says when an optional product is dropped, per language.
_DROPPED = {
    "en": {"lesson": "The proposed lesson was dropped: {reason}.",
           "next": "The proposed next experiment was dropped: {reason}."},
    "zh": {"lesson": "建议的经验已放弃:{reason}。", "next": "建议的下一个实验已放弃:{reason}。"},
}


def _dropped(lang: str, product: str, exc: Exception) -> str:
    reason = (str(exc).splitlines()[0] if str(exc) else "") or type(exc).__name__
    if not isinstance(exc, MinimindError):
        reason = f"{type(exc).__name__}: {reason}"
    return _DROPPED.get(lang, _DROPPED["en"])[product].format(reason=reason.rstrip("."))


def _remember(lab: Lab, run_dir: Path, version: str, cfg: dict, plan: dict, ev: dict, verdict: str, reason: str,
              changes: list, analysis: Any = None, lang: str = "en", causes: Optional[list] = None) -> list[str]:
    """What the lab keeps from this analysis: a proposed lesson and the next experiment.

    The agent's proposals (validated by agent/tools.py) are used when it made them; the
    rules propose otherwise, and when the agent's next experiment does not validate as a
    whole config. Both are optional products: one that cannot be made or does not validate
    is dropped (its file removed) and the reason returned as a note for the record; it
    never fails the analysis. Returns the notes (why an agent's proposal was not used, what
    was dropped)."""
    import sys

    from lifecycle.knowledge import lessons, proposal

    backend = getattr(analysis, "backend", None)
    notes: list[str] = []
    try:
        rule_lesson = lessons.propose(version, plan, ev, verdict, reason, changes, lang, causes)
        model_lesson = getattr(analysis, "lesson", None)
        if model_lesson and rule_lesson is not None:
            rule_lesson = {**rule_lesson, "text": model_lesson["text"],
                           "evidence": "; ".join(model_lesson["evidence"]), "proposed_by": backend}
        lessons.write_proposal(run_dir, rule_lesson)
    except Exception as exc:  # noqa: BLE001 -- optional by contract: dropped, the reason recorded
        lessons.write_proposal(run_dir, None)
        notes.append(_dropped(lang, "lesson", exc))
    dangers = sorted(n for n, g in (ev.get("guardrails") or {}).items() if g.get("level") == "danger")
    try:
        nxt = proposal.build(lab, version, cfg, verdict, dangers, changes, lang,
                             suggested=getattr(analysis, "next_experiment", None), backend=backend, causes=causes)
    except Exception as exc:  # noqa: BLE001 -- optional by contract: dropped, the reason recorded
        (run_dir / NEXT_FILE).unlink(missing_ok=True)  # a proposal from an earlier analysis is not this one's
        notes.append(_dropped(lang, "next", exc))
    else:
        proposal.write(run_dir, nxt)
        if nxt.get("fallback_reason"):
            notes.append(nxt["fallback_reason"])
    for note in notes:
        print(f"warning: {note}", file=sys.stderr, flush=True)  # train.log under the pipeline
    return notes


def _read_yaml(path: Path) -> Optional[dict]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def analyse_when_complete(run_dir: Path, agent: Optional[str] = None) -> tuple[str, str]:
    """Called by each replicate's pipeline after its evaluation: the last one analyses the experiment.
    Returns (`analysed` | `failed` | `waiting` | `done before`, what happened in words)."""
    from lifecycle.knowledge.replicates import analyse_lock, complete
    from minimind.rundir import experiment_dir

    exp_dir = experiment_dir(Path(run_dir).resolve())
    with analyse_lock(exp_dir):
        ready, waiting = complete(exp_dir)
        if not ready:
            return "waiting", f"waiting for the other replicates before the analysis: {waiting}"
        if read_state(exp_dir).analysed:
            return "done before", "the experiment was already analysed (by another replicate's pipeline)"
        ok, message = run_analysis(exp_dir, agent)
    return ("analysed" if ok else "failed"), message
