"""`minimind commit`: what a first run changed, a notebook of committed experiments only, the
reviewer and the committer from git's own identity (said when there is none), and secrets
found by the line they are on."""

from __future__ import annotations

import subprocess

import pytest

from lab_helpers import invoke, make_lab

GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss below uniform"


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data)


def _git(lab, *args) -> str:
    return subprocess.run(["git", *args], cwd=lab.root, capture_output=True, text=True).stdout


def test_a_first_run_lists_its_changes_from_the_lab_defaults():
    from lifecycle.running.analyse import real_changes

    plan = {"changes": [{"key": "train.batch_size", "base": 8, "new": 4, "why": "set by the human (--set)"},
                        {"key": "model.dim", "base": 32, "new": 48, "why": "w"}]}
    assert real_changes(None, {"train": {"batch_size": 4}}, plan) == [("train.batch_size", 8, 4), ("model.dim", 32, 48)]
    # against a base, the base's config decides, whatever the plan says
    assert real_changes({"train": {"batch_size": 8}}, {"train": {"batch_size": 4}}, plan) == [("train.batch_size", 8, 4)]


def test_committed_index_lists_only_committed_experiments(lab):
    for version in ("0.1.0", "0.1.1"):
        assert invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    result = invoke(lab, "commit", "0.1.0", "--yes")
    assert result.exit_code == 0, result.output
    committed = _git(lab, "show", "HEAD:experiment/INDEX.md")
    assert "[0.1.0]" in committed and "[0.1.1]" not in committed
    # the working tree's notebook still shows every experiment
    assert "[0.1.1]" in (lab.experiment_dir / "INDEX.md").read_text()


def test_reviewer_is_gits_user(lab, monkeypatch):
    monkeypatch.delenv("GIT_AUTHOR_NAME")
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")
    monkeypatch.delenv("USER", raising=False)
    subprocess.run(["git", "config", "user.name", "Ada Reviewer"], cwd=lab.root, check=True)
    subprocess.run(["git", "config", "user.email", "ada@example.org"], cwd=lab.root, check=True)
    from lifecycle.document.gitops import reviewer

    assert reviewer(lab.root) == "Ada Reviewer <ada@example.org>"


def test_without_a_git_identity_commit_says_who_it_commits_as(lab, monkeypatch, tmp_path):
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no global git config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    result = invoke(lab, "commit", "0.1.0", "--yes")
    assert result.exit_code == 0, result.output
    assert "minimind@localhost" in result.output and "git config user.name" in result.output
    assert _git(lab, "log", "-1", "--format=%ae") == "minimind@localhost\n"


def test_secret_check_catches_aws_keys_and_names_the_line(lab):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    record = lab.record_path("0.1.0")
    lines = record.read_text().splitlines()
    lines.insert(5, "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    record.write_text("\n".join(lines) + "\n")
    head = _git(lab, "rev-parse", "HEAD")
    result = invoke(lab, "commit", "0.1.0", "--yes")
    assert result.exit_code == 3, result.output
    assert "experiment/experiment_0.1.0.md line 6" in result.output and "looks like a secret" in result.output
    assert _git(lab, "rev-parse", "HEAD") == head
