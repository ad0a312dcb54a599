"""The agent call log (calls.jsonl) and the claude modules' import weight."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent import calllog


def test_summary_without_a_log_is_zero(tmp_path):
    assert calllog.summary(tmp_path / "nothing") == {"calls": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}


def test_append_and_summarise(tmp_path):
    calllog.append_call(tmp_path, {"step": "plan", "backend": "claude", "model": "claude-sonnet-4-5",
                                   "usage": {"input_tokens": 2000, "output_tokens": 1000}, "latency_s": 1.2})
    calllog.append_call(tmp_path, {"step": "plan", "backend": "offline", "model": "offline"})
    with open(tmp_path / calllog.CALLS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"step": "analyse", "cost_u')  # a line cut short by a crash
    total = calllog.summary(tmp_path)
    assert total["calls"] == 2
    assert total["cost_usd"] == pytest.approx((2000 * 3 + 1000 * 15) / 1e6)
    assert (total["input_tokens"], total["output_tokens"]) == (2000, 1000)
    first = calllog.read_calls(tmp_path)[0]
    assert first["time"] and first["latency_s"] == 1.2


def test_unknown_models_are_priced_conservatively():
    assert calllog.price_for("some-future-model") == max(calllog.PRICES_PER_MTOK.values())
    assert calllog.estimate_cost("offline", 10**6, 10**6) == 0


def test_secrets_are_redacted(tmp_path):
    secret = "sk-ant-api03-very-secret-value"
    calllog.append_call(tmp_path, {"step": "plan", "request": {"headers": {"x-api-key": secret, "Authorization": "Bearer x"},
                                                               "messages": [{"content": f"key={secret}"}]}},
                        secrets=[secret])
    text = (tmp_path / calllog.CALLS_FILE).read_text(encoding="utf-8")
    assert secret not in text and "Bearer" not in text
    record = json.loads(text)
    assert record["request"]["messages"][0]["content"] == "key=[redacted]"


def test_light_imports():
    """`status` imports calllog, the CLI may import the backend module: neither pulls in anthropic."""
    code = ("import sys, agent.calllog, agent.tools, agent.claude; "
            "print('anthropic' in sys.modules, 'httpx2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
