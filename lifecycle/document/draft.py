"""The commit an experiment makes: which files it holds and the drafted message's shape.

The files are decided here, never by the agent: the record, the run script, the config,
the plan and analysis, eval.json and metrics, the plots, the snapshot, the state as of the
commit (state.committed.json: what a clone reads, as state.json stays local), and
models/model.py when it still holds the code that ran. `required_files` is what an
experiment must have before review approves it and `commit` takes it.
"""


from __future__ import annotations

from pathlib import Path

from lifecycle.knowledge.lessons import LESSONS_FILE
from lifecycle.knowledge.notebook import INDEX_FILE
from minimind.lab import Lab
from minimind.rundir import (ANALYSIS_FILE, CODE_CHANGE_FILE, COMMITTED_STATE_FILE, CONFIG_FILE, DIFF_FILE, EVAL_FILE, LESSON_FILE,
                             METRICS_FILE, NEXT_FILE, PATCH_FILE, PLAN_FILE, PLOTS_DIR, RUN_SCRIPT, SEEDS_FILE, RunState,
                             replicate_dirs)

RUN_FILES = (RUN_SCRIPT, CONFIG_FILE, PLAN_FILE, ANALYSIS_FILE, EVAL_FILE, METRICS_FILE, DIFF_FILE, LESSON_FILE, NEXT_FILE,
             COMMITTED_STATE_FILE, CODE_CHANGE_FILE, PATCH_FILE, SEEDS_FILE)
REPLICATE_FILES = (RUN_SCRIPT, CONFIG_FILE, EVAL_FILE, METRICS_FILE, COMMITTED_STATE_FILE)
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
    from minimind.phrases import phrase

    summary = " ".join(summary.split()).rstrip(" .。")
    if version not in summary:
        summary = phrase("commit_title.head", lang, version=version) + summary
    tail = phrase("commit_title.verdict", lang, word=phrase(f"verdict_word.{verdict}", lang))
    return summary[: 120 - len(tail)] + tail


def render_commit_message(lab: Lab, draft, ctx) -> str:
    """The lab's commit format. The title's verdict word and `## Results` come from code
    (ctx.verdict, ctx.result_lines), never from the draft."""
    from lifecycle.document.render import render

    allowed = set(ctx.files)
    core = {f: lines for f, lines in draft.core_changes.items() if f in allowed}
    data = {"title": commit_title(draft.title, ctx.version, ctx.verdict, ctx.lang), "improvements": draft.improvements,
            "core_changes": core, "results": list(ctx.result_lines), "next_steps": draft.next_steps}
    return render("commit.txt.j2", {"d": data}, lab.templates_dir, lang=ctx.lang).strip() + "\n"


