"""Pure rules: the verdict, comparison rows, result lines, the offline agent's parsing,
and every template rendered with StrictUndefined (the run script through bash -n)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minimind.verdict import (bank_reading, compare_rows, decide, held_out_control, implied_criteria, parse_criteria,
                              result_lines)

def measured(inference: list[float], val: list[float] | None = None, recall: dict | None = None, **over) -> dict:
    """An eval.json with per-item data: one loss per document (10 tokens each), hits per probe."""
    val = val if val is not None else inference
    recall = recall or {}
    out = {"val_loss": sum(val) / len(val), "inference_loss": sum(inference) / len(inference), "repetition_rate": 0.3,
           "recall": {split: {"p_at_1": sum(h) / len(h), "mrr": sum(h) / len(h), "n": len(h)} for split, h in recall.items()},
           "per_item": {"val": {"keys": list(range(len(val))), "ce": [10 * v for v in val], "tokens": [10] * len(val)},
                        "inference": {"keys": list(range(len(inference))), "ce": [10 * v for v in inference],
                                      "tokens": [10] * len(inference)},
                        "recall": {split: {"keys": [f"p{i}" for i in range(len(h))], "hit": h, "rr": h}
                                   for split, h in recall.items()}}}
    out.update(over)
    return out


NOISY = [4.0, 4.4, 3.9, 4.3, 4.1, 4.5, 3.8, 4.2]
BASE = measured(NOISY, recall={"mem_only": [0.0] * 40 + [1.0] * 4, "held_out": [0.0, 1.0] * 20})


def shifted(delta: float, **kw) -> dict:
    return measured([v + delta for v in NOISY], **kw)


def test_explicit_criteria_decide():
    assert parse_criteria("inference_loss < base and recall.mem_only.p_at_1 > 0.2")[1].target == 0.2
    new = shifted(-0.3, recall={"mem_only": [1.0] * 30 + [0.0] * 14})
    verdict, reason = decide("h", "inference_loss < base and recall.mem_only.p_at_1 > 0.2", new, BASE)
    assert verdict == "supported" and "expected result" in reason and "95% CI" in reason
    verdict, reason = decide("h", "inference_loss < base", shifted(+0.3), BASE)
    assert verdict == "refuted" and "missed" in reason
    # a change of the same size, but only on some documents: the paired interval spans zero
    mixed = measured([v + d for v, d in zip(NOISY, [0.4, -0.4, 0.3, -0.35, 0.4, -0.4, 0.3, -0.2])])
    verdict, reason = decide("h", "inference_loss < base", mixed, BASE)
    assert verdict == "inconclusive" and "within noise" in reason


def test_no_per_item_data_is_never_a_change():
    old_base = {"inference_loss": 4.2, "val_loss": 4.0}
    verdict, reason = decide("lower inference loss", None, shifted(-1.0), old_base)
    assert verdict == "inconclusive" and "no paired interval" in reason
    rows = {r["metric"]: r for r in compare_rows(shifted(-1.0), old_base)}
    assert rows["inference_loss"]["mark"] is None and rows["inference_loss"]["better"] is None
    assert "no interval" in rows["inference_loss"]["delta_text"]


def test_implied_and_default_criteria():
    assert [c.metric for c in implied_criteria("freezing lowers the inference loss")] == ["inference_loss"]
    assert implied_criteria("召回率 提高")[0].op == ">"
    base = measured(NOISY, recall={"both": [0.0, 0.0, 0.0, 1.0] * 10})
    new = measured(NOISY, recall={"both": [1.0, 1.0, 1.0, 0.0] * 10})
    verdict, reason = decide("memory improves recall", None, new, base)
    assert verdict == "supported"
    verdict, reason = decide("something vague", None, shifted(-0.5), BASE)
    assert verdict == "supported" and "default" in reason
    assert decide("x", None, shifted(0), None)[0] == "inconclusive"  # nothing to compare with
    assert decide("x", None, None, BASE)[0] == "inconclusive"


def test_danger_guardrail_blocks_supported():
    verdict, reason = decide("lower inference loss", None, shifted(-1.0), BASE, {"repetition_rate": "danger"})
    assert verdict == "inconclusive" and "repetition_rate" in reason


def test_compare_rows_and_result_lines():
    new = shifted(-0.5, val=[v + 0.3 for v in NOISY], recall={"mem_only": [0.0] * 40 + [1.0] * 4,
                                                             "held_out": [1.0, 1.0] * 20})
    rows = {r["metric"]: r for r in compare_rows(new, BASE)}
    assert rows["inference_loss"]["better"] is True and "✅" in rows["inference_loss"]["delta_text"]
    assert rows["val_loss"]["better"] is False and rows["val_loss"]["mark"] == "❌"
    assert rows["recall.mem_only.p_at_1"]["mark"] == "≈"  # unchanged: within noise
    assert rows["repetition_rate"]["mark"] is None       # no per-sample data here
    control = held_out_control(new, BASE)
    assert control["suspicious"] and "suspicious" in control["text"]
    guards = {"train_loss": {"value": 0.05, "level": "danger"}, "memory_entropy": {"value": 2.5, "level": "watch"},
              "repetition_rate": {"value": 0.1, "level": "safe"}}
    lines = result_lines(list(rows.values()), guards, "refuted", "r", control=control)
    assert lines[0].startswith("❌ hypothesis refuted")
    assert any(l.startswith("❌ guardrail train_loss") for l in lines)
    assert any(l.startswith("🟡 guardrail memory_entropy") for l in lines)  # watch is never ✅
    assert any(l.startswith("✅ guardrail repetition_rate") for l in lines)
    assert any(l.startswith("✅ inference_loss") and "95% CI" in l for l in lines)
    assert any(l.startswith("≈ recall.mem_only.p_at_1") for l in lines)
    assert any(l.startswith("⚠️ held_out P@1") for l in lines)
    assert result_lines([], {}, "inconclusive", "r")[0].startswith("≈ hypothesis inconclusive")


def test_held_out_noise_is_not_flagged():
    new = measured(NOISY, recall={"held_out": [1.0, 0.0] * 20})  # same count, other probes hit
    control = held_out_control(new, BASE)
    assert not control["suspicious"] and "noise" in control["text"]


def test_offline_pairs_in_text():
    from agent.offline import pairs_in_text

    assert pairs_in_text("try freeze_ratio=0.4, and train.learning_rate = 1e-3; dim=256)") == [
        ("freeze_ratio", 0.4), ("train.learning_rate", 0.001), ("dim", 256)]
    assert pairs_in_text("no pairs here") == []


def test_shell_quote_filter():
    from lifecycle.document.render import shell_quote
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
        "version": "1.4.8", "base": "1.4.7", "state": "finished", "config_hash": "abc", "code_change": None, "snapshot": {"module": "model_1_4_8", "sha256": "f" * 64},
        "human": {"goal": "g\nline2", "hypothesis": "h", "expect": None, "base": "1.4.7"},
        "plan": {"thinking": "The base froze a fifth of the bank; a wider model tests whether capacity was the limit.", "changes": [{"key": "model.dim", "base": 32, "new": 64, "why": "w|x"}], "expected": "e",
                 "risks": ["r"], "backend": "offline", "note": ""},
        "git": {"commit": "abc", "dirty": True, "diff": "+x", "diff_truncated": False, "model_changed": True, "against": "HEAD"},
        "model": model, "train": TrainConfig(), "config_rows": [("model.dim", 64)], "has_memory": True,
        "execution": {"launched": True, "pid": 1, "pgid": 1, "started_at": "s", "ended_at": "e", "duration": "1s", "step": 10,
                      "total_steps": 10, "eta": None, "stop_reason": None, "resources": "1 process"},
        "training": {"available": True, "steps": 10, "first_loss": 5.0, "last_loss": 3.0, "min_loss": 2.9, "smoothed_loss": 3.1,
                     "tokens_per_s": 1000.0, "duration": "1s"},
        "evaluation": {"available": True, "rows": compare_rows(shifted(0), BASE), "control": held_out_control(shifted(0), BASE), "intervals_note": "n",
                       "retrieval": [{"split": "mem_only", "n": 40, "in_bank": 90, "c": 8, "hit_at_1": 0.1, "hit_at_1_ci": "[0.00, 0.20]",
                                      "hit_at_c": 0.5, "hit_at_c_ci": "[0.35, 0.65]", "mean_rank": 2.5, "control_hit_at_1": 0.0,
                                      "control_hit_at_c": 0.05, "control_hit_at_c_ci": "[0.00, 0.12]"}],
                       "bank_reading": bank_reading(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 38 + [1.0] * 2), lang=lang),
                       "guardrails": [{"name": "train_loss", "value": 3.0, "level": "safe", "light": "🟢"}],
                       "recall": [{"split": "mem_only", "n": 5, "p_at_1": 0.2, "mrr": 0.4, "p_ci": "[0.1, 0.3]"}],
                       "samples": [{"prompt": "p", "reference": "r", "generated": "g"}]},
        "eval_prompt_tokens": 30,
        "analysis": {"available": True, "training_results": "tr", "inference_evaluation": "ie", "deep_analysis": "da",
                     "conclusion": "c", "next_steps": ["n1"], "backend": "offline", "notes": []},
        "analysis_failed": False, "analysis_error": "",
        "preflight": {"checks": [{"id": "causality", "status": "passed", "lesson": "l", "detail": "d", "source": "s"}], "forced": False,
                      "reason": None, "compute_note": None, "compute_accepted": False},
        "estimate_lines": ["parameters: 1"],
        "verdict": {"verdict": "supported", "reason": "r", "verdict_zh": "支持"},
    }}


def retrieved(hits: list[float], control: list[float], **over) -> dict:
    """An eval.json of a memory preset: the mem_only probes' own-entry hits and the control's."""
    n = len(hits)
    return measured(NOISY, retrieval={"num_candidates": 8, "memory_layers": 2, "knowledge_num": 256,
                                      "mem_only": {"n": n, "in_bank": n, "hit_at_1": 0.0, "hit_at_c": sum(hits) / n,
                                                   "control": {"hit_at_1": 0.0, "hit_at_c": sum(control) / n}}},
                    per_item={"retrieval": {"mem_only": {"keys": [f"p{i}" for i in range(n)], "hit_at_1": [0.0] * n,
                                                         "hit_at_c": hits, "control_hit_at_c": control}}}, **over)


def test_bank_reading_against_the_shuffled_control_and_retrieval_rows():
    used = bank_reading(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 38 + [1.0] * 2))
    assert used["above_chance"] and used["splits"]["mem_only"]["ci"]["low"] > 0
    assert "0.5 of the time, a random other fact's 0.05" in used["text"] and used["text"].endswith("above chance")
    chance = bank_reading(retrieved([0.0] * 36 + [1.0] * 4, [0.0] * 37 + [1.0] * 3))
    assert not chance["above_chance"] and chance["text"].endswith("at chance")
    assert "与随机无异" in bank_reading(retrieved([0.0] * 36 + [1.0] * 4, [0.0] * 37 + [1.0] * 3), lang="zh")["text"]
    assert bank_reading(BASE) is None  # no memory, no diagnostics
    # hit@C is a metric of the comparison (paired over the same probes), and a criterion --expect can name
    rows = {r["metric"]: r for r in compare_rows(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 40),
                                                 retrieved([0.0] * 38 + [1.0] * 2, [0.0] * 40))}
    assert rows["retrieval.mem_only.hit_at_c"]["mark"] == "✅" and "retrieval.both.hit_at_c" not in rows
    assert "retrieval.mem_only.hit_at_c" not in {r["metric"] for r in compare_rows(BASE, BASE)}
    assert parse_criteria("retrieval.mem_only.hit@C > 0.3")[0].metric == "retrieval.mem_only.hit_at_c"
    lines = result_lines([], {}, "supported", "r", reading=used)
    assert lines[-1].startswith("✅ bank reads: mem_only: the fact's own entry")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_record_templates_render_every_section(lang):
    from lifecycle.document.record import headings
    from lifecycle.document.render import render
    from lifecycle.document.rules import quality_problems

    text = render("record.md.j2", _record_context(lang), lang=lang)
    positions = [text.index(f"## {h}") for h in headings(lang)]
    assert positions == sorted(positions)
    assert quality_problems(text, "finished", None, lang) == []
    assert "w\\|x" in text  # table cells escaped
    assert "| mem_only | 40 (90) | 0.1 [0.00, 0.20] | 0.5 [0.35, 0.65] |" in text
    assert ("above chance" if lang == "en" else "高于随机") in text
    assert quality_problems(text.replace("- n1", ""), "finished", None, lang) == ["the conclusion with next steps is missing"]
    assert "🧩" not in text  # no code section without a code change


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_record_of_a_code_experiment_shows_its_hunks_stages_and_approval(lang):
    from lifecycle.document.render import render
    from lifecycle.document.rules import quality_problems

    context = _record_context(lang)
    context["r"]["code_change"] = {
        "source": "agent", "change": {"summary": "gate the memory read", "changes_default": False},
        "approval": {"by": "ana", "how": "--approve-code", "at": "2026-12-05T03:00:00Z", "sha256": "ab" * 32},
        "hunks": [{"text": "-x = 1\n+x = 2", "reasons": ["why one"]}],
        "stages": [{"stage": "lint", "status": "passed", "detail": "no new a|b"}],
        "isolation": {"network": "unshare -n"}, "rounds": 2, "new_settings": ["mem_gate"], "touched": ["MemoryLayer.forward"],
        "rejections": [{"round": 2, "kind": "rejection", "note": "open the gate", "by": "ana", "at": "t1",
                        "rejected_sha256": "cd" * 32}]}
    text = render("record.md.j2", context, lang=lang)
    assert "gate the memory read" in text and "+x = 2" in text and "why one" in text
    assert "open the gate" in text and "cdcdcdcdcdcd" in text  # the human's rejection round and its note
    assert "ana" in text and "abababababababab" in text and "mem_gate" in text and "MemoryLayer.forward" in text
    assert "no new a\\|b" in text  # table cells escaped
    assert quality_problems(text, "finished", None, lang) == []


def test_commit_and_run_script_templates(tmp_path):
    from lifecycle.document.render import render

    d = {"title": "t", "improvements": ["i"], "core_changes": {"a.py": ["c"]}, "results": ["✅ r"], "next_steps": ["n"]}
    assert "## Core changes\n### a.py\n- c" in render("commit.txt.j2", {"d": d}, lang="en")
    assert "## 核心变更" in render("commit.txt.j2", {"d": d}, lang="zh")
    script = render("run.sh.j2", {"version": "1.4.8", "run_dir": "/tmp/a b/runs/1.4.8", "lab_root": "/tmp/a b",
                                  "python": sys.executable, "env": {"X": "$(id)"}, "train_cmd": [sys.executable, "-m", "x"]})
    path = tmp_path / "run.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "set -euo pipefail" in script and "export X='$(id)'" in script


def test_a_consistent_but_tiny_change_is_run_to_run_noise():
    # every document 0.4% better: the paired interval excludes zero, but another seed moves this much
    new = measured([v * 0.996 for v in NOISY])
    rows = {r["metric"]: r for r in compare_rows(new, BASE)}
    ci = rows["inference_loss"]["ci"]
    assert ci["high"] < 0 and rows["inference_loss"]["mark"] == "≈"
    verdict, reason = decide("lower inference loss", None, new, BASE)
    assert verdict == "inconclusive" and "run-to-run floor of 1%" in reason
    assert decide("lower inference loss", None, new, BASE, min_effect=0.0)[0] == "supported"


def test_a_record_edited_during_training_gets_its_results_merged():
    from lifecycle.document.record import merge_record

    head = "---\nstate: running\n---\n\n# Experiment 1.0.0\n\n"
    def record(thinking: str, results: str, state: str = "running") -> str:
        return (head.replace("running", state) + f"## 🧠 AI Thinking Process\n\n{thinking}\n\n## 🚀 Execution Record\n\n{results}\n\n"
                f"## 📊 Training Results\n\n{results}\n\n## 🔍 Inference Evaluation\n\n{results}\n\n"
                f"## 📈 Deep Analysis\n\n{results}\n\n## 🎯 Conclusion\n\n{results}\n")
    previous = record("agent thinking", "Pending: written after evaluation.")
    edited = previous.replace("agent thinking", "agent thinking\n\nThe human's note: watch entropy.")
    rendered = record("agent thinking", "| numbers |", state="finished")
    merged = merge_record(edited, previous, rendered, "en")
    assert "The human's note: watch entropy." in merged and "Pending" not in merged and "| numbers |" in merged
    assert "state: finished" in merged
    # the human edited a section code owns: not merged (the render goes beside the record)
    assert merge_record(edited.replace("## 🎯 Conclusion\n\nPending", "## 🎯 Conclusion\n\nMy own words. Pending"),
                        previous, rendered, "en") is None
    # a run made before the last render was kept: only placeholders are replaced
    assert "| numbers |" in merge_record(edited, None, rendered, "en")


@pytest.mark.parametrize("verdict", ["supported", "refuted", "inconclusive"])
def test_the_prose_checker_accepts_the_chinese_verdict_words_code_writes(verdict):
    from agent.offline import _t
    from agent.prose import known_values, problems, verdict_sentence
    from lifecycle.document.draft import commit_title

    _, reason = decide("降低推理损失", "inference_loss < base", shifted(-1.0), BASE, lang="zh")
    texts = {"line": result_lines([], {}, verdict, reason, lang="zh")[0],
             "sentence": verdict_sentence(verdict, reason, "zh"), "meaning": _t("zh", f"m_{verdict}"),
             "title": commit_title("实验 0.1.1:记忆层", "0.1.1", verdict, "zh")}
    assert problems(texts, verdict, known_values({"eval": shifted(-1.0), "base_eval": BASE})) == {}
    assert "criteria" not in reason and "标准来自预期结果" in reason and "置信区间" in reason
    # what the offline agent writes in zh passes the number check: a ratio is not an inference loss,
    # and "95% 置信区间" is the interval's level
    zh = {"inference": _t("zh", "inference", val="4.2", inf="3.15", ratio="0.95", rep="30.0%", d2="—"),
          "interval": f"val_loss: 4.2 → 3.2 ({'95% 置信区间 [-1.2, -0.8]'})"}
    assert problems(zh, verdict, known_values({"eval": {**shifted(-1.0), "train_inference_ratio": 0.95},
                                               "base_eval": BASE})) == {}


def test_changed_symbols_name_the_functions_a_diff_touches():
    import difflib

    from lifecycle.running.analyse import changed_symbols

    old = "import x\n\nclass Memory:\n    def read(self):\n        return 1\n\n    def write(self):\n        pass\n\n\ndef helper():\n    return 2\n"
    new = old.replace("return 1", "return 3").replace("return 2", "return 4").replace("import x", "import y")
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a", "b", n=1))
    assert changed_symbols(diff, old, new) == ["Memory.read", "helper"]  # the import is module level


def test_offline_conclusion_cites_the_metric_the_verdict_was_decided_on_first():
    """An SFT run is decided on chat QA; its conclusion named only the inference loss SFT raised."""
    from agent.base import AnalysisContext
    from agent.offline import OfflineAgent

    ci = {"low": 0.33, "high": 0.48, "n": 500, "confidence": 0.95}
    rows = [{"metric": "inference_loss", "base": 1.77, "new": 7.51, "delta": 5.74, "better": False,
             "ci": {"low": 5.3, "high": 6.1, "n": 12, "confidence": 0.95}},
            {"metric": "chat_qa.taught.accuracy", "base": 0.1, "new": 0.508, "delta": 0.408, "better": True, "ci": ci}]
    ctx = AnalysisContext(version="0.1.2", base="0.1.1", goal="g", hypothesis="SFT teaches the facts",
                          expect="chat_qa.taught.accuracy > base", state="finished", stop_reason=None,
                          config_changes=[], metrics_summary={"steps": 10, "first_loss": 8.7, "last_loss": 0.5},
                          eval={}, base_eval={}, comparison=rows, verdict="supported",
                          verdict_reason="chat_qa.taught.accuracy base 0.1 → 0.508: met", guardrails={},
                          memory_presets=("memory", "hybrid"))
    conclusion = OfflineAgent().analyse(ctx).conclusion
    assert conclusion.startswith("Against 0.1.1: chat_qa.taught.accuracy 0.1 → 0.508 (Δ 95% CI [+0.33, +0.48])"), conclusion
    assert conclusion.index("chat_qa.taught.accuracy") < conclusion.index("inference_loss")
