"""`minimind commit`: exactly one experiment's files, the drafted message, explicit identity.

The files are decided here, never by the agent: the record, the run script, the config,
the plan and analysis, eval.json and metrics, the plots, the snapshot, and models/model.py
when it still holds the code that ran.
"""

from __future__ import annotations

from minimind.errors import GateRefused
from minimind.lab import Lab
from minimind.rundir import (ANALYSIS_FILE, CODE_CHANGE_FILE, COMMIT_MSG_FILE, CONFIG_FILE, DIFF_FILE, EVAL_FILE, LESSON_FILE, METRICS_FILE,
                             NEXT_FILE, PATCH_FILE, PLAN_FILE, PLOTS_DIR, REVIEW_FILE, RUN_SCRIPT, current, read_json,
                             update_state)

RUN_FILES = (RUN_SCRIPT, CONFIG_FILE, PLAN_FILE, ANALYSIS_FILE, EVAL_FILE, METRICS_FILE, DIFF_FILE, LESSON_FILE, NEXT_FILE,
             CODE_CHANGE_FILE, PATCH_FILE)
from lifecycle.history import INDEX_FILE  # noqa: E402
from lifecycle.lessons import LESSONS_FILE  # noqa: E402

LAB_FILES = (INDEX_FILE, LESSONS_FILE)  # the lab notebook and lessons in experiment/, committed with each experiment


def experiment_files(lab: Lab, version: str) -> list[str]:
    """Lab-relative paths this experiment's commit contains (those that exist)."""
    run_dir = lab.run_dir(version)
    rel = [lab.record_path(version).relative_to(lab.root)]
    rel += [(lab.experiment_dir / name).relative_to(lab.root) for name in LAB_FILES]
    rel += [(run_dir / name).relative_to(lab.root) for name in RUN_FILES]
    plots = run_dir / PLOTS_DIR
    if plots.is_dir():
        rel += sorted(p.relative_to(lab.root) for p in plots.glob("*.png"))
    snapshot = lab.snapshot_path(version)
    rel.append(snapshot.relative_to(lab.root))
    living = lab.models_dir / "model.py"
    if snapshot.exists() and living.exists() and snapshot.read_bytes() == living.read_bytes():
        rel.append(living.relative_to(lab.root))
    return [str(p) for p in rel if (lab.root / p).exists()]


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

    run_dir = lab.require_run(version)
    derived, state = current(run_dir)
    if derived == "running":
        raise GateRefused(f"experiment {version} is still running; commit after it ends")
    review = read_json(run_dir / REVIEW_FILE) or {}
    if not review.get("approved") and not yes:
        raise GateRefused(f"experiment {version} is not reviewed: run 'minimind review {version} --approve' (or commit --yes)")
    message_path = run_dir / COMMIT_MSG_FILE
    if message_path.exists():
        message = message_path.read_text(encoding="utf-8")
    else:
        message = f"Experiment {version}\n\nNo drafted message: the experiment was not analysed (state: {derived}).\n"
    from lifecycle.history import write_index

    write_index(lab)  # the notebook as of this commit goes into it
    files = experiment_files(lab, version)
    sha = gitops.commit_paths(lab.root, files, message)
    update_state(run_dir, committed=True, commit=sha)
    return f"Committed experiment {version} as {sha[:12]} ({len(files)} of its files staged, unchanged ones included)"
