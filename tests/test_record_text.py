"""The record says what happened and nothing else: the whole training time, no memory settings
for a dense run, the human's text kept inside its own paragraph, and a zh record in Chinese."""

from __future__ import annotations

import json

import pytest

from lab_helpers import invoke, make_lab

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
