"""The agent backends' names come from one registry (agent/backends.py), and each backend says
itself whether it can run here: the CLI's --agent choices, the check of minimind.yaml
`agent.backend` and the `auto` rule read them from there."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from agent import backends
from agent.base import AgentError
from lifecycle.init import init_lab


def test_the_cli_offers_exactly_the_registry():
    for command in (cli.new, cli.analyse):
        (option,) = [p for p in command.params if p.name in ("agent", "agent_name")]
        assert list(option.type.choices) == [backends.AUTO, *backends.BACKENDS]


def test_auto_asks_each_backend_whether_it_can_run(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert backends.resolve_name("auto") == backends.FALLBACK
    assert "ANTHROPIC_API_KEY is not set" in backends.unavailable("claude")
    assert backends.unavailable("auto") is None and backends.unavailable("offline") is None
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert backends.resolve_name("auto") == "claude" and backends.unavailable("claude") is None


def test_a_backend_registered_later_is_chosen_by_auto_and_falls_back(monkeypatch, tmp_path):
    """A new backend is one registry entry: `auto` picks it when it can run, and offline takes
    over when it fails."""
    class Failing:
        def analyse(self, ctx):
            raise AgentError("the service is down")

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setitem(backends.BACKENDS, "local", backends.Backend(lambda settings, log_dir, prior: Failing()))
    assert backends.resolve_name("auto") == "local"
    monkeypatch.setitem(backends.BACKENDS, "local", backends.Backend(lambda s, d, p: Failing(), lambda: "no server"))
    assert backends.resolve_name("auto") == backends.FALLBACK


def test_an_unknown_backend_in_minimind_yaml_is_refused_before_anything_is_written(tmp_path: Path):
    lab = init_lab(tmp_path / "lab")
    settings = lab.settings_path.read_text(encoding="utf-8")
    assert settings.count("agent:\n  backend: auto\n") == 1
    lab.settings_path.write_text(settings.replace("agent:\n  backend: auto\n", "agent:\n  backend: claud\n"),
                                 encoding="utf-8")
    before = sorted(p for p in lab.root.rglob("*") if ".git" not in p.parts)
    result = CliRunner().invoke(cli.main, ["new", "0.1.0", "--goal", "g", "--hypothesis", "h", "--no-launch"],
                                env={"MINIMIND_LAB": str(lab.root), "MINIMIND_AGENT_BACKEND": None})
    assert result.exit_code == 1, result.output
    assert "minimind.yaml: agent.backend: must be one of auto, offline, claude; got 'claud'" in result.output
    assert sorted(p for p in lab.root.rglob("*") if ".git" not in p.parts) == before


@pytest.mark.parametrize("name", ["claude", "offline"])
def test_every_backend_builds_from_the_registry(name, monkeypatch, tmp_path):
    from minimind.settings import AgentSettings

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    backend = backends.BACKENDS[name].build(AgentSettings(), tmp_path, [])
    assert all(callable(getattr(backend, step)) for step in ("plan", "analyse", "draft_commit"))
