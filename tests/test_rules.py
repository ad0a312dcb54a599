"""Pure rules: the verdict, comparison rows, result lines, the offline agent's parsing,
and every template rendered with StrictUndefined (the run script through bash -n)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minimind.verdict import compare_rows, decide, implied_criteria, parse_criteria, result_lines

BASE = {"val_loss": 4.0, "inference_loss": 4.2, "repetition_rate": 0.3,
        "recall": {"mem_only": {"p_at_1": 0.1, "mrr": 0.3, "n": 50}}}


def ev(**over):
    out = {**BASE, **over}
    return out


def test_explicit_criteria_decide():
    assert parse_criteria("inference_loss < base and recall.mem_only.p_at_1 > 0.2")[1].target == 0.2
    new = ev(inference_loss=3.9, recall={"mem_only": {"p_at_1": 0.3, "mrr": 0.5, "n": 50}})
    verdict, reason = decide("h", "inference_loss < base and recall.mem_only.p_at_1 > 0.2", new, BASE)
    assert verdict == "supported" and "expected result" in reason
    verdict, _ = decide("h", "inference_loss < base", ev(inference_loss=4.5), BASE)
    assert verdict == "refuted"
    verdict, reason = decide("h", "inference_loss < base", ev(inference_loss=4.19), BASE)
    assert verdict == "inconclusive" and "within" in reason


def test_implied_and_default_criteria():
    assert [c.metric for c in implied_criteria("freezing lowers the inference loss")] == ["inference_loss"]
    assert implied_criteria("召回率 提高")[0].op == ">"
    verdict, reason = decide("memory improves recall", None, ev(recall={"both": {"p_at_1": 0.5}}), {"recall": {"both": {"p_at_1": 0.2}}})
    assert verdict == "supported"
    verdict, reason = decide("something vague", None, ev(inference_loss=3.0), BASE)
    assert verdict == "supported" and "default" in reason
    assert decide("x", None, ev(), None)[0] == "inconclusive"  # nothing to compare with
    assert decide("x", None, None, BASE)[0] == "inconclusive"


def test_danger_guardrail_blocks_supported():
    verdict, reason = decide("lower inference loss", None, ev(inference_loss=1.0), BASE, {"repetition_rate": "danger"})
    assert verdict == "inconclusive" and "repetition_rate" in reason


def test_compare_rows_and_result_lines():
    rows = {r["metric"]: r for r in compare_rows(ev(inference_loss=3.0, repetition_rate=0.6), BASE)}
    assert rows["inference_loss"]["better"] is True and "✅" in rows["inference_loss"]["delta_text"]
    assert rows["repetition_rate"]["better"] is False
    assert rows["val_loss"]["better"] is None  # unchanged
    lines = result_lines(list(rows.values()), {"train_loss": {"value": 0.05, "level": "danger"}}, "refuted", "r")
    assert lines[0].startswith("❌ hypothesis refuted")
    assert any(l.startswith("❌ guardrail train_loss") for l in lines)
    assert any(l.startswith("✅ inference_loss") for l in lines)


def test_offline_pairs_in_text():
    from agent.offline import pairs_in_text

    assert pairs_in_text("try freeze_ratio=0.4, and train.learning_rate = 1e-3; dim=256)") == [
        ("freeze_ratio", 0.4), ("train.learning_rate", 0.001), ("dim", 256)]
    assert pairs_in_text("no pairs here") == []


def test_shell_quote_filter():
    from lifecycle.render import shell_quote
    from minimind.errors import MinimindError

    hostile = "$(rm -rf x); `id` | cat\nnext"
    out = subprocess.run(["bash", "-c", f"printf %s {shell_quote(hostile)}"], capture_output=True, text=True).stdout
    assert out == hostile
    with pytest.raises(MinimindError):
        shell_quote("a\x00b")


def _record_context(lang: str) -> dict:
    model = {"preset": "memory", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 6400,
             "max_seq_len": 64, "knowledge_num": 256, "knowledge_length": 8, "knowledge_dim": 16, "num_candidates": 8,
             "freeze_ratio": 0.2, "freeze_policy": "random", "ema_decay": 0.9, "ema_update_freq": 5}
    from minimind.settings import TrainConfig

    return {"r": {
        "version": "1.4.8", "base": "1.4.7", "state": "finished", "config_hash": "abc", "snapshot": {"module": "model_1_4_8", "sha256": "f" * 64},
        "human": {"goal": "g\nline2", "hypothesis": "h", "expect": None, "base": "1.4.7"},
        "plan": {"thinking": "The base froze a fifth of the bank; a wider model tests whether capacity was the limit.", "changes": [{"key": "model.dim", "base": 32, "new": 64, "why": "w|x"}], "expected": "e",
                 "risks": ["r"], "backend": "offline", "note": ""},
        "git": {"commit": "abc", "dirty": True, "diff": "+x", "diff_truncated": False, "model_changed": True, "against": "HEAD"},
        "model": model, "train": TrainConfig(), "config_rows": [("model.dim", 64)],
        "execution": {"launched": True, "pid": 1, "pgid": 1, "started_at": "s", "ended_at": "e", "duration": "1s", "step": 10,
                      "total_steps": 10, "eta": None, "stop_reason": None, "resources": "1 process"},
        "training": {"available": True, "steps": 10, "first_loss": 5.0, "last_loss": 3.0, "min_loss": 2.9, "smoothed_loss": 3.1,
                     "tokens_per_s": 1000.0, "duration": "1s"},
        "evaluation": {"available": True, "rows": compare_rows(ev(), BASE), "guardrails": [{"name": "train_loss", "value": 3.0, "level": "safe", "light": "🟢"}],
                       "recall": [{"split": "mem_only", "n": 5, "p_at_1": 0.2, "mrr": 0.4, "p_ci": "[0.1, 0.3]"}],
                       "samples": [{"prompt": "p", "reference": "r", "generated": "g"}]},
        "eval_prompt_tokens": 30,
        "analysis": {"available": True, "training_results": "tr", "inference_evaluation": "ie", "deep_analysis": "da",
                     "conclusion": "c", "next_steps": ["n1"], "backend": "offline"},
        "preflight": {"checks": [{"id": "causality", "status": "passed", "lesson": "l", "detail": "d", "source": "s"}], "forced": False,
                      "reason": None, "compute_note": None, "compute_accepted": False},
        "estimate_lines": ["parameters: 1"],
        "verdict": {"verdict": "supported", "reason": "r", "verdict_zh": "支持"},
    }}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_record_templates_render_every_section(lang):
    from lifecycle.record import SECTIONS
    from lifecycle.render import render
    from lifecycle.review import quality_problems

    text = render(f"record_{lang}.md.j2", _record_context(lang))
    positions = [text.index(f"## {h}") for h in SECTIONS[lang]]
    assert positions == sorted(positions)
    assert quality_problems(text, "finished", None, lang) == []
    assert "w\\|x" in text  # table cells escaped
    assert quality_problems(text.replace("- n1", ""), "finished", None, lang) == ["the conclusion with next steps is missing"]


def test_commit_and_run_script_templates(tmp_path):
    from lifecycle.render import render

    d = {"title": "t", "improvements": ["i"], "core_changes": {"a.py": ["c"]}, "results": ["✅ r"], "next_steps": ["n"]}
    assert "## Core changes\n### a.py\n- c" in render("commit_en.txt.j2", {"d": d})
    assert "## 核心变更" in render("commit_zh.txt.j2", {"d": d})
    script = render("run.sh.j2", {"version": "1.4.8", "run_dir": "/tmp/a b/runs/1.4.8", "lab_root": "/tmp/a b",
                                  "python": sys.executable, "env": {"X": "$(id)"}, "train_cmd": [sys.executable, "-m", "x"]})
    path = tmp_path / "run.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "set -euo pipefail" in script and "export X='$(id)'" in script
