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
