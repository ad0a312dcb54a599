"""One number format and one interval format (minimind/formats.py), used wherever a person
reads a value: the record, the notebook, status, the lessons, the agent's prompts and prose."""

from __future__ import annotations

import re
from pathlib import Path

from minimind.formats import MISSING, interval, number

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minimind", "models", "corpus", "training", "agent", "lifecycle", "bench")
# The idioms the formatters replaced: "4 significant digits or —", and a [low, high] pair by hand.
COPIES = re.compile(r':\.4g\}" if isinstance|\{ci\[0\]:')


def test_a_number_has_four_significant_digits_or_a_dash():
    assert number(0.123456) == "0.1235" and number(3) == "3" and number(12345.6) == "1.235e+04"
    assert number(None) == number("0.5") == number(True) == MISSING == "—"


def test_an_interval_is_a_complete_pair_in_one_format():
    assert interval([0.1234, 0.5]) == "[0.12, 0.50]"
    assert interval((-0.3312, 0.4811), "+.3g") == "[-0.331, +0.481]"
    assert interval([None, 0.5]) == interval([0.1]) == interval(None) == interval({"low": 0, "high": 1}) == ""


def test_no_module_formats_numbers_its_own_way():
    copies = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == "minimind/formats.py":
                continue
            copies += [f"{rel}:{n}" for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                       if COPIES.search(line)]
    assert copies == []


def test_every_reader_sees_the_same_bounded_model_diff(tmp_path):
    """The record, the analysis and the commit draft showed 12,000, 8,000 and 20,000 characters
    of one diff: the agent explained less than the human read. One limit now."""
    from minimind.formats import MODEL_DIFF_CHARS, bounded_diff

    diff = "".join(f"+line {i}\n" for i in range(4000))
    shown = bounded_diff(diff)
    assert shown.startswith(diff[:MODEL_DIFF_CHARS]) and f"{len(diff) - MODEL_DIFF_CHARS} more characters" in shown
    assert bounded_diff("+x\n") == "+x\n"
    text = "\n".join(path.read_text(encoding="utf-8") for package in PACKAGES
                     for path in sorted((ROOT / package).rglob("*.py")))
    assert not re.search(r"(DIFF_LIMIT|MAX_DIFF)\s*=", text)  # no reader keeps its own limit


def test_the_criteria_of_a_verdict_have_one_owner():
    """Which criteria decide a verdict was written three times (the verdict and two places of
    the offline prose): now verdict.criteria_for, which the others ask."""
    from minimind.verdict import DEFAULT_METRIC, criteria_for

    stated, source = criteria_for("h", "chat_qa.taught.accuracy > base")
    assert source == "expected result" and [c.metric for c in stated] == ["chat_qa.taught.accuracy"]
    implied, source = criteria_for("the memory lowers val loss", None)
    assert source == "hypothesis" and [c.metric for c in implied] == ["val_loss"]
    fallback, source = criteria_for("something happens", None)
    assert source == "default" and [(c.metric, c.op) for c in fallback] == [(DEFAULT_METRIC, "<")]
    text = "\n".join(path.read_text(encoding="utf-8") for package in PACKAGES
                     for path in sorted((ROOT / package).rglob("*.py")) if path.name != "verdict.py")
    assert "or implied_criteria(" not in text  # the rule "stated, else implied, else the default" is written once
