"""`minimind commit`: exactly one experiment's files, the drafted message, explicit identity.

The files are decided here, never by the agent: the record, the run script, the config,
the plan and analysis, eval.json and metrics, the plots, the snapshot, the state as of the
commit (state.committed.json: what a clone reads, as state.json stays local), and
models/model.py when it still holds the code that ran. An experiment that lacks a file
it must have (`required_files`) is refused. The commit is all or nothing: a failure puts
the notebook and the committed state back, and signals wait until it is done.
"""

from __future__ import annotations

from pathlib import Path

from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.rundir import (ANALYSIS_FILE, CODE_CHANGE_FILE, COMMIT_MSG_FILE, COMMITTED_STATE_FILE, CONFIG_FILE, DIFF_FILE, EVAL_FILE,
                             LESSON_FILE, METRICS_FILE, MISSING, NEXT_FILE, PATCH_FILE, PLAN_FILE, PLOTS_DIR, REVIEW_FILE, RUN_SCRIPT,
                             SEEDS_FILE, UNREADABLE, RunState, committed_state, current, read_exit_code, read_json, replicate_dirs,
                             state_note, update_state)

RUN_FILES = (RUN_SCRIPT, CONFIG_FILE, PLAN_FILE, ANALYSIS_FILE, EVAL_FILE, METRICS_FILE, DIFF_FILE, LESSON_FILE, NEXT_FILE,
             COMMITTED_STATE_FILE, CODE_CHANGE_FILE, PATCH_FILE, SEEDS_FILE)
REPLICATE_FILES = (RUN_SCRIPT, CONFIG_FILE, EVAL_FILE, METRICS_FILE, COMMITTED_STATE_FILE)
from lifecycle.history import INDEX_FILE  # noqa: E402
from lifecycle.lessons import LESSONS_FILE  # noqa: E402

LAB_FILES = (INDEX_FILE, LESSONS_FILE)  # the lab notebook and lessons in experiment/, committed with each experiment


def experiment_files(lab: Lab, version: str) -> list[str]:
    """Lab-relative paths this experiment's commit contains (those that exist)."""
    run_dir = lab.run_dir(version)
    rel = [lab.record_path(version).relative_to(lab.root)]
    rel += [(lab.experiment_dir / name).relative_to(lab.root) for name in LAB_FILES]
    rel += [(run_dir / name).relative_to(lab.root) for name in RUN_FILES]
    # The experiment's other replicates: each one's config, numbers and committed state (no checkpoints, no log).
    for rep in replicate_dirs(run_dir)[1:]:
        rel += [(rep / name).relative_to(lab.root) for name in REPLICATE_FILES]
    plots = run_dir / PLOTS_DIR
    if plots.is_dir():
        rel += sorted(p.relative_to(lab.root) for p in plots.glob("*.png"))
    snapshot = lab.snapshot_path(version)
    rel.append(snapshot.relative_to(lab.root))
    living = lab.models_dir / "model.py"
    if snapshot.exists() and living.exists() and snapshot.read_bytes() == living.read_bytes():
        rel.append(living.relative_to(lab.root))
    return [str(p) for p in rel if (lab.root / p).exists()]


def required_files(lab: Lab, version: str, state: RunState) -> list[Path]:
    """What the commit of this experiment must contain: the record, run script, config, plan and
    snapshot always; the metrics once it trained, eval.json once evaluated, analysis.json once analysed."""
    run_dir = lab.run_dir(version)
    needed = [lab.record_path(version), run_dir / RUN_SCRIPT, run_dir / CONFIG_FILE, run_dir / PLAN_FILE,
              lab.snapshot_path(version)]
    if state.step:
        needed.append(run_dir / METRICS_FILE)
    if state.evaluated:
        needed.append(run_dir / EVAL_FILE)
    if state.analysed:
        needed.append(run_dir / ANALYSIS_FILE)
    return needed


def missing_files(lab: Lab, version: str, state: RunState) -> list[str]:
    """The lab-relative paths of `required_files` that are not there."""
    return [str(p.relative_to(lab.root)) for p in required_files(lab, version, state) if not p.is_file()]


def commit_title(summary: str, version: str, verdict: str, lang: str) -> str:
    """The title line: the agent's summary (checked prose), then the computed verdict word."""
    from minimind.verdict import VERDICT_ZH

    summary = " ".join(summary.split()).rstrip(" .。")
    if version not in summary:
        summary = (f"实验 {version}: " if lang == "zh" else f"Experiment {version}: ") + summary
    tail = f"（假设{VERDICT_ZH[verdict]}）" if lang == "zh" else f" (hypothesis {verdict})"
    return summary[: 120 - len(tail)] + tail


def render_commit_message(lab: Lab, draft, ctx) -> str:
    """The lab's commit format. The title's verdict word and `## Results` come from code
    (ctx.verdict, ctx.result_lines), never from the draft."""
    from lifecycle.render import render

    allowed = set(ctx.files)
    core = {f: lines for f, lines in draft.core_changes.items() if f in allowed}
    data = {"title": commit_title(draft.title, ctx.version, ctx.verdict, ctx.lang), "improvements": draft.improvements,
            "core_changes": core, "results": list(ctx.result_lines), "next_steps": draft.next_steps}
    return render(f"commit_{ctx.lang}.txt.j2", {"d": data}, lab.templates_dir).strip() + "\n"


def commit_experiment(lab: Lab, version: str, yes: bool) -> str:
    from lifecycle import gitops
    from minimind.atomic import write_json
    from minimind.undo import Undo, signals_held

    run_dir = lab.require_run(version)
    derived, state = current(run_dir)
    if derived == "running":
        raise GateRefused(f"experiment {version} is still running; commit after it ends")
    busy = [r.name for r in replicate_dirs(run_dir)[1:] if current(r)[0] in ("running", "queued")]
    if busy:
        raise GateRefused(f"experiment {version}'s replicates with seed {', '.join(busy)} are still running; "
                          "commit after they end")
    if derived in (MISSING, UNREADABLE):
        raise MinimindError(f"experiment {version} cannot be committed: {state_note(run_dir)}")
    missing = missing_files(lab, version, state)
    if missing:
        raise GateRefused(f"experiment {version} lacks {', '.join(missing)}: not committed (a commit must say "
                          "what ran; restore the file, or redo the step that writes it)")
    review = read_json(run_dir / REVIEW_FILE) or {}
    if not review.get("approved") and not yes:
        raise GateRefused(f"experiment {version} is not reviewed: run 'minimind review {version} --approve' (or commit --yes)")
    message_path = run_dir / COMMIT_MSG_FILE
    if message_path.exists():
        message = message_path.read_text(encoding="utf-8")
    else:
        message = f"Experiment {version}\n\nNo drafted message: the experiment was not analysed (state: {derived}).\n"
    from lifecycle.history import write_index

    # The committed notebook lists what the history holds: the experiments committed before and
    # this one; the working tree's lists every experiment again afterwards.
    committed = [v for v in lab.versions() if v == version or current(lab.run_dir(v))[1].committed]
    undo = Undo()
    reps = replicate_dirs(run_dir)[1:]
    undo.keep(lab.experiment_dir / INDEX_FILE, run_dir / COMMITTED_STATE_FILE, *(r / COMMITTED_STATE_FILE for r in reps))
    # Short and local: SIGTERM/SIGINT wait until the commit and its flag are both written, so
    # git and state.json never disagree; an error puts the notebook and committed state back.
    with signals_held():
        try:
            write_index(lab, committed)
            write_json(run_dir / COMMITTED_STATE_FILE, committed_state(derived, state, read_exit_code(run_dir)))
            for rep in reps:
                rep_derived, rep_state = current(rep)
                write_json(rep / COMMITTED_STATE_FILE, committed_state(rep_derived, rep_state, read_exit_code(rep)))
            files = experiment_files(lab, version)
            sha = gitops.commit_paths(lab.root, files, message)
        except BaseException:
            undo.rollback()
            raise
        update_state(run_dir, committed=True, commit=sha)
        write_index(lab)
    note = gitops.identity_note(lab.root)
    return (f"Committed experiment {version} as {sha[:12]} ({len(files)} of its files staged, unchanged ones included)"
            + (f"\nNote: {note}" if note else ""))
