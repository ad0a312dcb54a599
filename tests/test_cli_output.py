"""What the CLI prints fits where it goes: `history` the terminal's width, the `init` hint a shell."""

from __future__ import annotations

import subprocess

from click.testing import CliRunner

from lab_helpers import invoke, make_lab


def test_init_hint_is_shell_quoted(tmp_path):
    import cli

    target = tmp_path / "my lab $(touch pwned)"
    result = CliRunner().invoke(cli.main, ["init", str(target)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    hint = [l for l in result.output.splitlines() if l.startswith("Next: ")][0][len("Next: "):]
    cd = hint.split(" && ")[0]
    done = subprocess.run(["bash", "-c", f"{cd} && pwd"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == str(target.resolve()), (hint, done.stderr)
    assert not (tmp_path / "pwned").exists()


def test_history_fits_the_terminal(tmp_path, bundled_data):
    lab = make_lab(tmp_path / "lab", bundled_data)
    goal = "A long goal " * 12
    assert invoke(lab, "new", "0.1.0", "--goal", goal, "--hypothesis", "h " * 40, "--no-launch").exit_code == 0
    for width in (80, 120):
        result = invoke(lab, "history", env={"COLUMNS": str(width)})
        assert result.exit_code == 0, result.output
        assert "0.1.0" in result.output
        assert max(len(line) for line in result.output.splitlines()) <= width, result.output
        assert "drafted" in result.output  # the state stays whole, not folded into slivers
        # nothing cut off at the right edge: a table wider than the terminal is cropped, not folded
        rows = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(line.rstrip()[-1] in "┓┃┩│┘" for line in rows), result.output


def test_status_fits_the_terminal(tmp_path, bundled_data):
    """At 80 columns the table folded its cells into 'finish…' and 'pretra…' (a walk through
    the README found it): what a row is looked up and judged by stays whole."""
    import os
    import time

    from minimind.rundir import process_start_time, update_state, write_exit_code

    lab = make_lab(tmp_path / "lab", bundled_data)
    for v in ("0.1.0", "0.1.1"):
        assert invoke(lab, "new", v, "--goal", "g", "--hypothesis", "h", "--no-launch").exit_code == 0
    update_state(lab.run_dir("0.1.0"), state="guardrail_stopped", step=29, total_steps=29, pid=1)
    write_exit_code(lab.run_dir("0.1.0"), 0)
    # a run in its evaluation (this process stands in for it): the phase is the widest cell
    update_state(lab.run_dir("0.1.1"), state="running", step=213, total_steps=213, pid=os.getpid(),
                 proc_start=process_start_time(os.getpid()), heartbeat=time.time(),
                 phase="evaluate: recall 188/1200")
    for width in (80, 100, 120):
        out = invoke(lab, "status", env={"COLUMNS": str(width)}).output
        assert max(len(line) for line in out.splitlines()) <= width, out
        table = out.split("guardrail lights:")[0]
        rows = [line for line in table.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(line.rstrip()[-1] in "┓┃┩│┘" for line in rows), out  # not cropped at the edge
        assert "…" not in table, out
        for whole in ("0.1.0", "29/29", "running", "pretrain" if width >= 110 else "0.1.0"):
            assert whole in table, out
        assert "guardrail_stopped" in table if width >= 110 else ("guardrail" in table and "stopped" in table), out
        assert "0m00s" not in table  # training is over: no ETA while it evaluates
