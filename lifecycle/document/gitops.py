"""Git for the lab through GitPython: init, its .gitignore, head/dirty at launch, diffs, committing one experiment.

Author and committer are always passed explicitly (GitPython would otherwise commit as
root@host on a machine with no identity).
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from minimind.atomic import write_text
from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab

DEFAULT_NAME = "minimind"
DEFAULT_EMAIL = "minimind@localhost"

# Content that looks like a credential is never committed.
SECRET_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9]{20,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # api_key = ..., aws_secret_access_key = ..., "github_token": "..." (a name ending in the word:
    # `tokenizer: data/...` is no secret)
    re.compile(r"(?i)(api[_-]?key|secret(_access)?[_-]?key|secret|token|password|access[_-]?key)['\"]?\s*[:=]\s*"
               r"['\"]?[A-Za-z0-9_\-/+=]{16,}"),
    re.compile(r"ghp_[A-Za-z0-9]{30,}"),
]


def _repo(root: Path):
    import git

    try:
        return git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def git_errors():
    import git

    return git.exc


def identity(root: Optional[Path] = None) -> tuple[Optional[str], Optional[str]]:
    """(name, email) as git knows them: env, then the lab repository's config (local, global and
    system, as `git config` reads them), then the global file alone; None where git has none."""
    import git

    name = os.environ.get("GIT_AUTHOR_NAME")
    email = os.environ.get("GIT_AUTHOR_EMAIL")
    repo = _repo(root) if root is not None else None
    readers = []
    try:
        readers.append(repo.config_reader() if repo is not None
                       else git.GitConfigParser(git.config.get_config_path("global"), read_only=True))
    except (OSError, configparser.Error):
        pass
    for reader in readers:
        try:
            name = name or reader.get_value("user", "name", "") or None
            email = email or reader.get_value("user", "email", "") or None
        except (OSError, configparser.Error):
            continue
    return (str(name) if name else None), (str(email) if email else None)


def actor(root: Optional[Path] = None):
    """The identity for commits: git's own (see `identity`), else a fixed minimind identity."""
    import git

    name, email = identity(root)
    return git.Actor(name or DEFAULT_NAME, email or DEFAULT_EMAIL)


def reviewer(root: Path) -> str:
    """Who reviews, for review.json and LESSONS.md: git's user, else the login name."""
    name, email = identity(root)
    if name:
        return f"{name} <{email}>" if email else name
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def identity_note(root: Path) -> Optional[str]:
    """A sentence when the commit falls back to minimind's own identity, else None."""
    name, email = identity(root)
    if name and email:
        return None
    who = actor(root)
    return (f"no git identity: committed as {who.name} <{who.email}>; set git config user.name and "
            "git config user.email to commit as yourself")


def init_repo(root: Path) -> None:
    """A new repository on branch main with the lab skeleton as its first commit."""
    import git

    repo = git.Repo.init(root, initial_branch="main")
    repo.git.add(A=True)
    who = actor()
    repo.index.commit("Create minimind lab", author=who, committer=who)


def head_info(root: Path) -> dict:
    """{commit, dirty} of the lab at launch; {commit: None} outside git."""
    repo = _repo(root)
    if repo is None:
        return {"commit": None, "dirty": None}
    try:
        commit = repo.head.commit.hexsha
    except ValueError:
        commit = None
    return {"commit": commit, "dirty": repo.is_dirty(untracked_files=False)}


def file_at_head(root: Path, rel: str) -> Optional[str]:
    repo = _repo(root)
    if repo is None:
        return None
    try:
        # GitPython strips the output's final newline by default; the diff must be byte-exact.
        return repo.git.show(f"HEAD:{rel}", strip_newline_in_stdout=False)
    except git_errors().GitCommandError:  # not in HEAD
        return None


def find_secrets(paths: Iterable[Path], root: Optional[Path] = None) -> list[str]:
    """'file line N (what)' for each file whose text looks like a credential: its first such line."""
    hits = []
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        name = path.relative_to(root) if root is not None and path.is_relative_to(root) else path.name
        for number, line in enumerate(text.splitlines(), 1):
            if api_key and len(api_key) >= 8 and api_key in line:
                hits.append(f"{name} line {number} (contains ANTHROPIC_API_KEY)")
                break
            pattern = next((p for p in SECRET_PATTERNS if p.search(line)), None)
            if pattern is not None:
                hits.append(f"{name} line {number} (matches {pattern.pattern[:24]}...)")
                break
    return hits


def commit_paths(root: Path, rel_paths: list[str], message: str) -> str:
    """Stage exactly `rel_paths` and commit them; returns the commit id."""
    import git

    repo = _repo(root)
    if repo is None:
        raise MinimindError(f"{root} is not a git repository")
    existing = [p for p in rel_paths if (root / p).exists()]
    secrets = find_secrets((root / p for p in existing), root)
    if secrets:
        raise GateRefused(f"refusing to commit: {secrets[0]} looks like a secret")
    try:
        # Stage only these paths; anything else already staged stays out of this commit.
        repo.git.add("--", *existing)
        who = actor(root)
        repo.git.commit("-m", message, "--only", "--", *existing,
                        author=f"{who.name} <{who.email}>",
                        env={"GIT_COMMITTER_NAME": who.name, "GIT_COMMITTER_EMAIL": who.email})
    except git.GitCommandError as exc:
        detail = (exc.stderr or exc.stdout or str(exc)).strip().splitlines()
        raise MinimindError(f"git commit failed: {detail[-1] if detail else exc}") from None
    return repo.head.commit.hexsha


# What every lab keeps out of git: written by `init`, and completed in an older lab by
# `ensure_gitignore` when a run first needs a newer line.
GITIGNORE = """\
# minimind: data builds, checkpoints, logs and caches stay out of git
data/
runs/*/checkpoints/
runs/*/train.log
runs/*/swanlog/
runs/*/exit_code*
runs/*/seeds/*/checkpoints/
runs/*/seeds/*/train.log
runs/*/seeds/*/swanlog/
runs/*/seeds/*/exit_code*
runs/*/seeds/*/state.json
runs/*/seeds/*/.state.lock
runs/*/seeds/*/plots/
runs/*/seeds/.queue/
runs/*/.analyse.lock
runs/*/state.json
runs/*/.state.lock
runs/*/.record.sha256
runs/*/.record.last.md
runs/.failed/
runs/*/record.rendered.md
runs/*/commit_message.md
runs/*/review.json
runs/*/agent/
runs/*/ds_config.json
runs/.*
!runs/.gitkeep
runs/compare_*.png
swanlog/
__pycache__/
*.pyc
*.pth
*.pt
.venv/
"""


def ensure_gitignore(lab: Lab) -> None:
    """Add to the lab's .gitignore every line of today's that it lacks, keeping its own: a lab
    made before replicates knew nothing of runs/V/seeds/S/ (their checkpoints, state)."""
    path = lab.root / ".gitignore"
    have = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    missing = [line for line in GITIGNORE.splitlines() if line and not line.startswith("#") and line not in have]
    if missing:
        write_text(path, "\n".join(have + ["# added by minimind for replicates and newer run files", *missing]) + "\n")
