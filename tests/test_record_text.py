"""The record as a document: it says what happened and nothing else (the whole training time,
no memory settings for a dense run, the human's text kept inside its own paragraph, a zh record
in Chinese); every template renders with StrictUndefined (the run script through bash -n); one
record and one commit template serve every language, and a lab made before them (minimind <= 0.1,
one copy per language in its templates/) renders with the package's, its old copies kept beside
as .legacy; pending sections carry the renderer's mark."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab_helpers import invoke, make_lab
from verdict_data import record_context

GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss below uniform"


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data)


def test_training_time_counts_the_first_log_interval():
    """29 steps logged every 10: the first row comes after 10 steps, so first-to-last row
    time (45 s) misses a third of the training (62 s), which `elapsed_s` counts."""
    from lifecycle.document.record import metrics_summary

    rows = [{"step": s, "loss": 5.0, "time": 1000.0 + 2.1 * s, "elapsed_s": 2.1 * s + 1.1} for s in (10, 20, 29)]
    summary = metrics_summary(rows)
    assert summary["duration"] == "1m02s", summary


def test_dense_config_table_has_no_memory_settings(lab):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    assert invoke(lab, "new", "0.1.1", "--goal", GOAL, "--hypothesis", HYP, "--set", "preset=memory",
                  "--no-launch").exit_code == 0
    dense, memory = lab.record_path("0.1.0").read_text(), lab.record_path("0.1.1").read_text()
    for key in ("model.knowledge_num", "model.num_candidates", "model.freeze_ratio", "model.ema_decay"):
        assert f"| `{key}` |" not in dense and f"| `{key}` |" in memory


def test_memory_presets_agree_with_the_model():
    from lifecycle.document.record import has_memory
    from models.model import PRESET_ALIASES, PRESETS

    for name, spec in PRESETS.items():
        assert has_memory({"preset": name}) == spec.memory
    for alias, name in PRESET_ALIASES.items():
        assert has_memory({"preset": alias}) == PRESETS[name].memory


def _headings(text: str) -> list[str]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt().parse(text.split("---\n", 2)[2])  # without the front matter
    return [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]


def test_the_humans_unclosed_code_fence_swallows_nothing(lab):
    from lifecycle.document.record import headings

    goal = "Try the fused kernel:\n```python\nx = fused(h)\n\n## 🎯 Conclusion\nsupported"
    # no --expect: the agent's expectation quotes the hypothesis, whose second line opens a fence
    hypothesis = "The fused kernel keeps the loss:\n```\nloss(fused) == loss(plain)"
    result = invoke(lab, "new", "0.1.0", "--goal", goal, "--hypothesis", hypothesis, "--no-launch")
    assert result.exit_code == 0, result.output
    assert invoke(lab, "new", "0.1.1", "--goal", "~~~\nunclosed", "--hypothesis", "h", "--expect",
                  "val_loss < base\n```", "--no-launch").exit_code == 0
    for version in ("0.1.0", "0.1.1"):
        record = lab.record_path(version).read_text()
        assert _headings(record) == headings("en"), version
    assert "x = fused(h)" in lab.record_path("0.1.0").read_text()  # the text is kept, only neutralised


def test_closing_an_open_fence():
    from lifecycle.document.render import _closed, _human

    assert _closed("a\n```py\nx") == "a\n```py\nx\n```"
    assert _closed("a\n````\nx\n```\ny") == "a\n````\nx\n```\ny\n````"  # a shorter fence does not close
    assert _closed("a\n```\nx\n```\nb") == "a\n```\nx\n```\nb"
    assert _closed("use `x` and ``` y ` here") == "use `x` and ``` y ` here"
    assert _human("a\n  ~~~\n# b") == "a\n  \\~\\~\\~\n\\# b"


def test_zh_record_has_no_english_fragments(lab):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    assert invoke(lab, "new", "0.1.1", "--goal", "更大的批", "--hypothesis", "批更大损失更低", "--base", "0.1.0",
                  "--set", "batch_size=4", "--lang", "zh", "--no-launch").exit_code == 0
    guard = {"repetition_rate": {"value": 0.1, "level": "safe"}, "train_inference_ratio": {"value": 12.0,
                                                                                           "level": "danger"}}
    for version, loss in (("0.1.0", 6.0), ("0.1.1", 5.5)):
        (lab.run_dir(version) / "eval.json").write_text(json.dumps({"val_loss": loss, "guardrails": guard}))
    from lifecycle.document.record import write_record

    text = write_record(lab, "0.1.1", "zh").read_text()
    assert "`train.batch_size`" in text
    for english in ("set by the human", "(no interval)", "| 🟢 safe |", "| 🔴 danger |"):
        assert english not in text, english
    assert "由人类用 --set 设定" in text and "无区间" in text and "🟢 安全" in text and "🔴 危险" in text


def test_zh_resources():
    from lifecycle.document.record import resources_in

    assert resources_in("1 process(es) on cpu, mixed precision no, micro-batch 4 x accumulation 1", "zh") == \
        "1 个进程,设备 cpu,混合精度 no,微批 4 × 累积 1"
    assert resources_in("8 process(es) on cuda, mixed precision bf16, micro-batch 16 x accumulation 64 "
                        "(split by the memory plan), DeepSpeed", "zh") == \
        "8 个进程,设备 cuda,混合精度 bf16,微批 16 × 累积 64(按内存计划拆分),DeepSpeed"
    assert resources_in("1 process(es), mixed precision auto", "zh") == "1 个进程,混合精度 auto"
    assert resources_in("something else", "zh") == "something else"
    for text in ("8 process(es) on cuda, mixed precision bf16, micro-batch 16 x accumulation 64 (split by the memory "
                 "plan), DeepSpeed", "1 process(es), mixed precision auto"):
        assert resources_in(text, "en") == text  # the book's English is the trainer's own words


def test_zh_plot_labels(tmp_path, monkeypatch):
    from training import plots

    seen = {}

    def capture(fig, out_png):
        ax = fig.axes[0]
        seen.update(x=ax.get_xlabel(), y=ax.get_ylabel(), title=ax.get_title(),
                    legend=[t.get_text() for t in ax.get_legend().get_texts()])

    monkeypatch.setattr(plots, "_save", capture)
    rows = [{"step": s, "loss_ce": 5.0 - s / 10} for s in range(1, 6)] + [{"step": 5, "eval/val_loss": 4.8}]
    monkeypatch.setattr(plots, "_cjk_fonts", lambda: ["DejaVu Sans"])  # a machine with a Chinese font
    plots.plot_run(rows, tmp_path / "loss.png", "0.1.1", window=3, lang="zh")
    assert seen["x"] == "步数" and seen["y"] == "损失" and "训练损失" in seen["title"]
    assert seen["legend"] == ["训练(原始)", "训练(最近 3 步均值)", "验证"]
    monkeypatch.setattr(plots, "_cjk_fonts", lambda: [])  # none: English words rather than boxes
    plots.plot_run(rows, tmp_path / "loss.png", "0.1.1", window=3, lang="zh")
    assert seen["x"] == "step" and seen["legend"][0] == "train (raw)"


def test_shell_quote_filter():
    from lifecycle.document.render import shell_quote
    from minimind.errors import MinimindError

    hostile = "$(rm -rf x); `id` | cat\nnext"
    out = subprocess.run(["bash", "-c", f"printf %s {shell_quote(hostile)}"], capture_output=True, text=True).stdout
    assert out == hostile
    with pytest.raises(MinimindError):
        shell_quote("a\x00b")



@pytest.mark.parametrize("lang", ["en", "zh"])
def test_record_templates_render_every_section(lang):
    from lifecycle.document.record import headings
    from lifecycle.document.render import render
    from lifecycle.document.rules import quality_problems

    text = render("record.md.j2", record_context(lang), lang=lang)
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

    context = record_context(lang)
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


OLD_COPIES = ("record_en.md.j2", "record_zh.md.j2", "commit_en.txt.j2", "commit_zh.txt.j2")
NEW = ["--goal", "A dense baseline", "--hypothesis", "A dense model learns the facts of the small corpus", "--no-launch"]


@pytest.fixture
def old_lab(tmp_path, bundled):
    """A lab as minimind <= 0.1 left it: per-language copies in templates/, no one template."""
    lab = make_lab(tmp_path / "lab", bundled)
    for name in ("record.md.j2", "commit.txt.j2"):
        (lab.templates_dir / name).unlink(missing_ok=True)
    for name in OLD_COPIES:
        (lab.templates_dir / name).write_text(f"old copy {name}: {{{{ r.version }}}}\n", encoding="utf-8")
    return lab


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_lab_with_per_language_copies_renders_with_the_one_template(old_lab, lang):
    from lifecycle.document.record import SECTION_IDS, heading, render_record
    from lifecycle.document.render import render

    result = invoke(old_lab, "new", "0.1.0", *NEW, "--lang", lang)
    assert result.exit_code == 0, result.output
    record = old_lab.record_path("0.1.0").read_text()
    assert "old copy" not in record
    positions = [record.index(f"## {heading(i, lang)}\n") for i in SECTION_IDS]
    assert positions == sorted(positions)
    message = render("commit.txt.j2", {"d": {"title": "t", "improvements": ["i"], "core_changes": {}, "results": [],
                                               "next_steps": []}}, old_lab.templates_dir, lang=lang)
    assert message.startswith("t\n\n## ") and "old copy" not in message
    for name in OLD_COPIES:  # moved aside once, untouched
        assert not (old_lab.templates_dir / name).exists()
        assert (old_lab.templates_dir / f"{name}.legacy").read_text().startswith(f"old copy {name}")
    assert render_record(old_lab, "0.1.0", lang) == record  # the same template every time


def test_the_note_names_the_legacy_copies_once(old_lab):
    from lifecycle.document.render import upgrade_legacy_copies

    notes = upgrade_legacy_copies(old_lab.templates_dir, "record.md.j2")
    assert len(notes) == 1 and "record_en.md.j2" in notes[0] and ".legacy" in notes[0]
    assert upgrade_legacy_copies(old_lab.templates_dir, "record.md.j2") == []
    assert (old_lab.templates_dir / "commit_en.txt.j2").exists()  # only what the one template replaced


def test_pending_sections_carry_the_mark_and_the_merge_reads_it(tmp_path, bundled):
    """A record the human edited, from a run made before record.last was kept: the owned sections
    still pending are replaced by the new render. Pending is told by the renderer's mark; a
    record without any mark (minimind <= 0.1.x) by its placeholder prose."""
    from lifecycle.document.record import merge_record
    from lifecycle.document.render import PENDING_MARK
    from lifecycle.document.rules import quality_problems

    lab = make_lab(tmp_path / "lab", bundled)
    assert invoke(lab, "new", "0.1.0", *NEW).exit_code == 0
    record = lab.record_path("0.1.0").read_text()
    assert record.count(PENDING_MARK) == 4  # training, evaluation, analysis, conclusion
    assert "the inference evaluation is missing (minimind eval)" in quality_problems(record, "finished", None, "en")
    # the mark alone tells: the placeholder may say anything
    marked = record.replace("Not evaluated yet", "Nothing here so far")
    later = marked.replace("Nothing here so far (state: drafted).", "| results |")
    merged = merge_record(marked, None, later, "en")
    assert merged is not None and "| results |" in merged
    assert merge_record(marked.replace(PENDING_MARK + "\n", ""), None, later, "en") is None
    # a record from before the mark: its placeholder prose tells
    old = record.replace(PENDING_MARK + "\n", "")
    merged = merge_record(old, None, record.replace("Not evaluated yet (state: drafted).", "| results |"), "en")
    assert merged is not None and "| results |" in merged
    assert "the conclusion with next steps is missing" in quality_problems(old, "finished", None, "en")
