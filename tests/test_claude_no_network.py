"""`--agent claude` on a machine without a network fails at once on the name-resolution error,
with no retries, and says to use --agent offline."""

from __future__ import annotations

import socket
import time

import pytest

from agent import calllog
from agent.base import AgentError, PlanContext
from agent.claude import ClaudeAgent
from minimind.settings import AgentSettings


def _context() -> PlanContext:
    return PlanContext(version="0.1.0", base=None, goal="g", hypothesis="h", expect=None, sets=[],
                       base_config={"model": {"preset": "original"}, "train": {}}, base_record_summary="",
                       base_eval=None, model_diff="", config_schema={}, guardrails={}, lessons="", memory_presets=())


def test_name_resolution_failure_is_not_retried(monkeypatch, tmp_path):
    calls = []

    def no_dns(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    agent = ClaudeAgent(AgentSettings(max_retries=3, timeout_s=30.0), tmp_path / "agent", api_key="sk-ant-test-0123456789",
                        base_url="https://api.anthropic.com")
    start = time.monotonic()
    with pytest.raises(AgentError) as err:
        agent.plan(_context())
    assert time.monotonic() - start < 3, "retried a lookup that cannot succeed"
    message = str(err.value)
    assert "could not resolve api.anthropic.com" in message and "--agent offline" in message, message
    assert len(calllog.read_calls(tmp_path / "agent")) == 1  # one try, logged
