"""`minimind commit`: exactly one experiment's files, the drafted message, explicit identity.

What the commit holds is lifecycle/document/draft.py's. An experiment that lacks a file it
must have (`required_files`) is refused. The commit is all or nothing: a failure puts the
notebook and the committed state back, and signals wait until it is done.
"""

from __future__ import annotations

from lifecycle.document.draft import experiment_files, missing_files
from lifecycle.knowledge.notebook import INDEX_FILE
from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.rundir import (COMMIT_MSG_FILE, COMMITTED_STATE_FILE, MISSING, REVIEW_FILE, UNREADABLE, committed_state, current,
                             read_exit_code, read_json, replicate_dirs, state_note, update_state)


def commit_experiment(lab: Lab, version: str, yes: bool) -> str:
    from lifecycle.document import gitops
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
    from lifecycle.knowledge.notebook import write_index

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
