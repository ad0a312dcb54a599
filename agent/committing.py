"""`minimind commit`: exactly one experiment's files, the drafted message, explicit identity.

The files are decided here, never by the agent: the record, the run script, the config,
the plan and analysis, eval.json and metrics, the plots, the snapshot, and models/model.py
when it still holds the code that ran.
"""

from __future__ import annotations


from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.state import current, update_state
from minimind.versions import parse

RUN_FILES = ("run.sh", "config.yaml", "plan.json", "analysis.json", "eval.json", "metrics.jsonl", "model.diff")


def experiment_files(lab: Lab, version: str) -> list[str]:
    """Lab-relative paths this experiment's commit contains (those that exist)."""
    run_dir = lab.run_dir(version)
    rel = [lab.record_path(version).relative_to(lab.root)]
    rel += [(run_dir / name).relative_to(lab.root) for name in RUN_FILES]
    plots = run_dir / "plots"
    if plots.is_dir():
        rel += sorted(p.relative_to(lab.root) for p in plots.glob("*.png"))
    snapshot = lab.snapshot_path(version)
    rel.append(snapshot.relative_to(lab.root))
    living = lab.models_dir / "model.py"
    if snapshot.exists() and living.exists() and snapshot.read_bytes() == living.read_bytes():
        rel.append(living.relative_to(lab.root))
    return [str(p) for p in rel if (lab.root / p).exists()]


def render_commit_message(lab: Lab, draft, ctx) -> str:
    from agent.render import render

    allowed = set(ctx.files)
    core = {f: lines for f, lines in draft.core_changes.items() if f in allowed}
    data = {"title": " ".join(draft.title.split())[:120], "improvements": draft.improvements, "core_changes": core,
            "results": draft.results, "next_steps": draft.next_steps}
    return render(f"commit_{ctx.lang}.txt.j2", {"d": data}, lab.templates_dir).strip() + "\n"


def commit_experiment(lab: Lab, version: str, yes: bool) -> str:
    from agent import gitops
    from agent.record import COMMIT_MSG_FILE, read_json

    parse(version)
    run_dir = lab.run_dir(version)
    if not (run_dir / "state.json").exists():
        raise MinimindError(f"no experiment {version} in {lab.root}")
    derived, state = current(run_dir)
    if derived == "running":
        raise GateRefused(f"experiment {version} is still running; commit after it ends")
    review = read_json(run_dir / "review.json") or {}
    if not review.get("approved") and not yes:
        raise GateRefused(f"experiment {version} is not reviewed: run 'minimind review {version} --approve' (or commit --yes)")
    message_path = run_dir / COMMIT_MSG_FILE
    if message_path.exists():
        message = message_path.read_text(encoding="utf-8")
    else:
        message = f"Experiment {version}\n\nNo drafted message: the experiment was not analysed (state: {derived}).\n"
    files = experiment_files(lab, version)
    sha = gitops.commit_paths(lab.root, files, message)
    update_state(run_dir, committed=True, commit=sha)
    return f"Committed experiment {version} as {sha[:12]} ({len(files)} of its files staged, unchanged ones included)"
