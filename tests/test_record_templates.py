"""One record template and one commit template for every language: a lab made before them
(minimind <= 0.1, one copy per language in its templates/) renders with the package's one
template, its old copies kept beside as .legacy; pending sections carry the renderer's mark."""

from __future__ import annotations

import pytest

from lab_helpers import invoke, make_lab

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
