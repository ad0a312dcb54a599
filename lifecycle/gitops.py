"""Git for the lab through GitPython: init, head/dirty at launch, diffs, committing one experiment.

Author and committer are always passed explicitly (GitPython would otherwise commit as
root@host on a machine with no identity).
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from minimind.errors import GateRefused, MinimindError

DEFAULT_NAME = "minimind"
DEFAULT_EMAIL = "minimind@localhost"

# Content that looks like a credential is never committed.
SECRET_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9]{20,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(api[_-]?key|secret|token|password)\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{16,}"),
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


def actor():
    """The identity for commits: git config user, else env, else a fixed minimind identity."""
    import git

    name = os.environ.get("GIT_AUTHOR_NAME")
    email = os.environ.get("GIT_AUTHOR_EMAIL")
    if not (name and email):
        try:
            reader = git.GitConfigParser(git.config.get_config_path("global"), read_only=True)
            name = name or reader.get_value("user", "name", DEFAULT_NAME)
            email = email or reader.get_value("user", "email", DEFAULT_EMAIL)
        except (OSError, configparser.Error):
            name, email = name or DEFAULT_NAME, email or DEFAULT_EMAIL
    return git.Actor(str(name), str(email))


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


def find_secrets(paths: Iterable[Path]) -> list[str]:
    """Files (and the pattern) whose text looks like a credential."""
    hits = []
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if api_key and len(api_key) >= 8 and api_key in text:
            hits.append(f"{path.name} (contains ANTHROPIC_API_KEY)")
            continue
        for pattern in SECRET_PATTERNS:
            if pattern.search(text):
                hits.append(f"{path.name} (matches {pattern.pattern[:24]}...)")
                break
    return hits


def commit_paths(root: Path, rel_paths: list[str], message: str) -> str:
    """Stage exactly `rel_paths` and commit them; returns the commit id."""
    import git

    repo = _repo(root)
    if repo is None:
        raise MinimindError(f"{root} is not a git repository")
    existing = [p for p in rel_paths if (root / p).exists()]
    secrets = find_secrets(root / p for p in existing)
    if secrets:
        raise GateRefused(f"refusing to commit: {secrets[0]} looks like a secret")
    try:
        # Stage only these paths; anything else already staged stays out of this commit.
        repo.git.add("--", *existing)
        who = actor()
        repo.git.commit("-m", message, "--only", "--", *existing,
                        author=f"{who.name} <{who.email}>",
                        env={"GIT_COMMITTER_NAME": who.name, "GIT_COMMITTER_EMAIL": who.email})
    except git.GitCommandError as exc:
        detail = (exc.stderr or exc.stdout or str(exc)).strip().splitlines()
        raise MinimindError(f"git commit failed: {detail[-1] if detail else exc}") from None
    return repo.head.commit.hexsha
