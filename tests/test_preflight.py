"""Preflight: the lab's lessons run as checks on the experiment's model before `new` launches.

Each check has a test here that edits a copy of models/model.py to break exactly that
lesson and asserts the check reports `failed` (a removed check makes these fail), and
the CLI cases show that `new` refuses with exit 3 and writes nothing, or launches with
--force and keeps the failed check in the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab_helpers import invoke, make_lab, tree, wait_state

ROOT = Path(__file__).resolve().parent.parent
MODEL = (ROOT / "models" / "model.py").read_text(encoding="utf-8")

# One edit per lesson: (old, new) replacements in models/model.py.
MEMORY_READS_H = [("self.memory(h_attn, bank, embedding_weight, real)", "self.memory(h, bank, embedding_weight, real)")]
SEES_FUTURE = [(".tril(S - T)", ".tril(S - T + 1)"), ("is_causal = T == S and T > 1", "is_causal = False")]
CACHE_OFFSET = [("start = past_key_values[0][0].shape[1] if past_key_values else 0",
                 "start = past_key_values[0][0].shape[1] - 1 if past_key_values else 0")]
FROZEN_LEAK = [("keep = distinct & ~self.memory_frozen[unique]", "keep = distinct")]
BANK_SHAPE = [("shape = (config.knowledge_num, config.knowledge_length)",
               "shape = (config.knowledge_num, config.knowledge_length + 1)")]
RENAMED_MEMORY = [("class MemoryLayer(", "class KnowledgeReader("), ("MemoryLayer(config)", "KnowledgeReader(config)"),
                  ("list[tuple[int, MemoryLayer]]", "list")]


def edited(edits) -> str:
    text = MODEL
    for old, new in edits:
        assert old in text, f"models/model.py no longer contains {old!r}: update this test's edit"
        text = text.replace(old, new)
    return text


def results_for(tmp_path, edits, **config):
    from lifecycle.knowledge.checks import run_all
    from models.registry import load_module

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.py").write_text(edited(edits))
    module = load_module(folder, "model")
    cfg = module.ModelConfig(**{"preset": "memory", **config}).to_dict()
    return {r["id"]: r for r in run_all(module, cfg)}


@pytest.mark.parametrize("preset", ["memory", "hybrid", "original"])
def test_every_check_passes_on_the_living_model(tmp_path, preset):
    results = results_for(tmp_path, [], preset=preset)
    assert {r["status"] for r in results.values()} <= {"passed", "not_applicable"}, results
    assert set(results) == {"causality", "train_equals_inference", "memory_query", "frozen_entries", "param_count"}


@pytest.mark.parametrize("edits, check_id, words", [
    (MEMORY_READS_H, "memory_query", "x + h_attn"),
    (SEES_FUTURE, "causality", "sees the future"),
    (CACHE_OFFSET, "train_equals_inference", "KV-cached"),
    (FROZEN_LEAK, "frozen_entries", "frozen entr"),
    (BANK_SHAPE, "param_count", "bank has shape"),
])
def test_each_check_catches_its_lesson(tmp_path, edits, check_id, words):
    results = results_for(tmp_path, edits)
    assert results[check_id]["status"] == "failed", results[check_id]
    assert words in results[check_id]["detail"]


def test_a_layout_the_check_cannot_find_is_never_a_pass(tmp_path):
    results = results_for(tmp_path, RENAMED_MEMORY)
    assert results["memory_query"]["status"] == "could_not_check"
    assert "NOT verified" in results["memory_query"]["detail"]


@pytest.fixture
def lab(tmp_path, bundled):
    lab = make_lab(tmp_path / "lab", bundled, steps=4)
    lab.settings_path.write_text(lab.settings_path.read_text().replace("preset: original", "preset: memory"))
    return lab


def _edit_lab_model(lab, edits):
    (lab.models_dir / "model.py").write_text(edited(edits))


NEW = ["new", "0.1.0", "--goal", "memory baseline", "--hypothesis", "the memory layer lowers inference loss"]


def test_memory_reading_h_is_refused_and_writes_nothing(lab):
    _edit_lab_model(lab, MEMORY_READS_H)
    before = tree(lab.root)
    result = invoke(lab, *NEW)
    assert result.exit_code == 3, result.output
    assert "memory_query" in result.output and "never x + h_attn" in result.output and "1.4.3" in result.output
    assert tree(lab.root) == before


def test_force_launches_and_the_record_keeps_the_failed_check(lab):
    _edit_lab_model(lab, MEMORY_READS_H)
    result = invoke(lab, *NEW, "--force", "--reason", "reproducing 1.4.3 on purpose")
    assert result.exit_code == 0, result.output
    assert "Launched" in result.output and "✗ memory_query" in result.output
    plan = json.loads((lab.run_dir("0.1.0") / "plan.json").read_text())
    assert plan["preflight"]["forced"] and plan["preflight"]["reason"] == "reproducing 1.4.3 on purpose"
    record = lab.record_path("0.1.0").read_text()
    assert "| `memory_query` | ❌ FAILED |" in record and "reproducing 1.4.3 on purpose" in record
    # the prose claims only what the check found
    assert "memory_query FAILED" in record and "verified that the memory layer reads" not in record
    wait_state(lab, "0.1.0")


@pytest.mark.parametrize("edits, check_id", [(SEES_FUTURE, "causality"), (CACHE_OFFSET, "train_equals_inference")])
def test_new_refuses_a_model_that_breaks_a_lesson(lab, edits, check_id):
    _edit_lab_model(lab, edits)
    before = tree(lab.root)
    result = invoke(lab, *NEW, "--no-launch")
    assert result.exit_code == 3 and check_id in result.output, result.output
    assert tree(lab.root) == before


def test_check_command_and_the_lab_own_checks(lab):
    result = invoke(lab, "check")
    assert result.exit_code == 0 and "✓ memory_query" in result.output, result.output
    (lab.root / "checks.py").write_text(
        "from lifecycle.knowledge.checks import Check, Result\n\n"
        "def small_bank(probe):\n"
        "    n = probe.full_config['knowledge_num']\n"
        "    return Result.passed(f'{n} entries') if n <= 100 else Result.failed(f'{n} entries is over 100')\n\n"
        "CHECKS = [Check('small_bank', 'Banks stay under 100 entries here.', 'lab note', small_bank)]\n")
    result = invoke(lab, "check")
    assert result.exit_code == 3 and "small_bank" in result.output and "Banks stay under 100" in result.output
    assert invoke(lab, "check", "--force").exit_code == 0
    before = tree(lab.root)
    result = invoke(lab, *NEW, "--no-launch")
    assert result.exit_code == 3 and "small_bank" in result.output
    assert tree(lab.root) == before


def test_a_checks_evidence_is_the_labs_lessons_file(lab):
    """What happened when a lesson was learnt lives in experiment/LESSONS.md: the refusal cites
    the lab's own evidence for the check, as the lab wrote it."""
    _edit_lab_model(lab, MEMORY_READS_H)
    lessons = lab.experiment_dir / "LESSONS.md"
    text = lessons.read_text(encoding="utf-8")
    evidence = [line for line in text.splitlines() if line.startswith("- **Evidence:**") and "x + h_attn" in line][0]
    lessons.write_text(text.replace(evidence, "- **Evidence:** experiment 2.0.1 read x and its inference loss was 41.5."))
    result = invoke(lab, *NEW)
    assert result.exit_code == 3, result.output
    assert "experiment 2.0.1 read x and its inference loss was 41.5. (experiment/LESSONS.md)" in result.output
    assert "1.4.3" not in result.output
