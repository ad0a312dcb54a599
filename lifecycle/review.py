"""`minimind review`: show the record, check it against the lab's quality standard, approve.

The standard (seed guide, 质量标准) is lifecycle/document/rules.py; this verb shows the
record, applies the standard and writes the approval, all or nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

from lifecycle.document.rules import quality_problems
from minimind.atomic import write_json
from minimind.errors import GateRefused, MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import (LESSON_FILE, PLAN_FILE, RECORD_LAST_FILE, RECORD_MARK_FILE, RENDERED_RECORD_FILE, REVIEW_FILE,
                             STATE_FILE, current, read_json, update_state)


def _interactive() -> bool:
    """Whether a person is at the terminal to answer a prompt (never in scripts and pipes)."""
    import sys

    return sys.stdin.isatty() and sys.stdout.isatty()


def _all_or_nothing(review):
    """A review that fails (an error, SIGTERM, Ctrl-C) leaves every file it may write as it was:
    no approval, no accepted lesson, no re-rendered record. state.json is not put back byte for
    byte (a running trainer writes it meanwhile): only the `reviewed` flag is reset."""
    import functools
    import inspect

    @functools.wraps(review)
    def wrapper(lab: Lab, version: str, *args, **kwargs):
        from lifecycle.knowledge.lessons import LESSONS_FILE
        from minimind.rundir import has_state, read_state
        from minimind.undo import all_or_nothing

        run_dir = lab.require_run(version)
        written = [run_dir / REVIEW_FILE, run_dir / LESSON_FILE, lab.experiment_dir / LESSONS_FILE,
                   run_dir / RECORD_MARK_FILE, run_dir / RECORD_LAST_FILE, run_dir / RENDERED_RECORD_FILE]
        if not inspect.signature(review).bind(lab, version, *args, **kwargs).arguments.get("edit"):
            written.append(lab.record_path(version))  # the editor's changes are the human's: kept
        had_state = has_state(run_dir)
        reviewed = read_state(run_dir).reviewed
        with all_or_nothing(written):
            try:
                return review(lab, version, *args, **kwargs)
            except BaseException:
                if not had_state:
                    (run_dir / STATE_FILE).unlink(missing_ok=True)  # a clone's: the committed state again
                elif read_state(run_dir).reviewed != reviewed:
                    update_state(run_dir, reviewed=reviewed)
                raise
    return wrapper


@_all_or_nothing
def review_experiment(lab: Lab, version: str, approve: bool, edit: bool, show: bool = True,
                      reject_lesson: bool = False, accept_lesson: bool = False) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    if accept_lesson and not approve:
        raise UsageError("--accept-lesson goes with --approve: a lesson is accepted with the record it comes from")
    if accept_lesson and reject_lesson:
        raise UsageError("--accept-lesson and --reject-lesson exclude each other")
    run_dir = lab.require_run(version)
    path = lab.record_path(version)
    if not path.exists():
        raise MinimindError(f"experiment {version} has no record ({path.relative_to(lab.root)} is missing)")
    if edit:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        result = subprocess.run([*shlex.split(editor), str(path)])
        if result.returncode != 0:
            raise MinimindError(f"editor '{editor}' exited with {result.returncode}; approval not recorded")
    text = path.read_text(encoding="utf-8")
    derived, state = current(run_dir)
    lang = (read_json(run_dir / PLAN_FILE) or {}).get("lang", "en")
    console = Console()
    if show:
        console.print(Markdown(text))
    beside = run_dir / RENDERED_RECORD_FILE
    rendered = str(beside.relative_to(lab.root)) if beside.exists() else None
    problems = quality_problems(text, derived, state.stop_reason, lang,
                                state.analysis_error if state.analysis_failed else None, rendered, version)
    from lifecycle.document.draft import missing_files

    problems += [f"{path} is missing" for path in missing_files(lab, version, state)]
    console.rule(f"Review of {version}")
    if problems:
        console.print("[bold yellow]Missing against the lab's quality standard:[/]")
        for problem in problems:
            console.print(f"  ✗ {problem}")
    else:
        console.print("[bold green]✓ Meets the lab's quality standard[/] (goal, hypothesis, thinking, git record, "
                      "training, evaluation, conclusion with next steps).")
    from lifecycle.knowledge import lessons

    proposed = lessons.pending(run_dir)
    if proposed:
        console.print(f"[bold]Proposed lesson[/] (from {version}): {proposed['text']}\n  evidence: {proposed['evidence']}\n"
                      "  --approve --accept-lesson adds it to experiment/LESSONS.md; --reject-lesson drops it.",
                      markup=True)
    from lifecycle.document.gitops import reviewer as git_reviewer

    reviewer = git_reviewer(lab.root)
    if reject_lesson and lessons.reject(run_dir, reviewer):
        console.print("Lesson rejected: experiment/LESSONS.md is unchanged.")
    if approve:
        if problems:
            raise GateRefused(f"not approved: {problems[0]} ({len(problems)} problem(s))")
        write_json(run_dir / REVIEW_FILE, {"approved": True, "at": time.time(), "reviewer": reviewer})
        update_state(run_dir, reviewed=True)
        # Accepting a lesson is its own act: every later plan is told it, so approving the
        # record never accepts it on the side.
        if proposed and not reject_lesson and not accept_lesson and _interactive():
            import click

            accept_lesson = click.confirm("Accept the proposed lesson into experiment/LESSONS.md?", default=False)
        if accept_lesson:
            console.print("Lesson accepted into experiment/LESSONS.md: the next plans are told it."
                          if lessons.accept(lab, run_dir, reviewer) else
                          f"{version} has no proposed lesson to accept: experiment/LESSONS.md is unchanged.")
        elif proposed and not reject_lesson:
            console.print(f"The proposed lesson stays proposed (experiment/LESSONS.md unchanged): accept it with "
                          f"minimind review {version} --approve --accept-lesson, or drop it with --reject-lesson.")
        console.print(f"Approved. Next: minimind commit {version}")
    if (approve and proposed and accept_lesson) or reject_lesson:
        from lifecycle.document.record import write_record

        write_record(lab, version, lang)  # the record shows the lesson's new status
