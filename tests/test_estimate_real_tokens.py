"""The pretraining estimate counts the documents' real tokens once they are prepared (the wall
time was 5-20x the training's when every sequence counted max_seq_len); before, it says its
count is an upper bound."""

from __future__ import annotations

import pytest
import yaml

from lab_helpers import invoke, make_lab

NEW = ["--goal", "baseline", "--hypothesis", "a dense model lowers inference loss"]


@pytest.fixture
def lab(tmp_path, bundled):
    lab = make_lab(tmp_path / "lab", bundled)
    # sequences long enough that the bundled documents (43-166 tokens) leave most of them empty
    lab.settings_path.write_text(lab.settings_path.read_text().replace("max_seq_len: 64", "max_seq_len: 512"))
    return lab


def test_pretraining_estimate_counts_real_tokens(lab):
    from lifecycle.knowledge import estimate
    from minimind.config import from_dict
    from training.data import input_tokens
    from training.runtime import load_corpus

    assert invoke(lab, "new", "0.1.0", *NEW, "--no-launch").exit_code == 0
    cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    cfg["train"]["max_steps"], cfg["train"]["epochs"] = 0, 2
    bound = estimate.estimate(lab, cfg)  # no token cache yet: every sequence at max_seq_len
    assert bound["tokens_counted_how"].get("bound") is True
    assert "upper bound" in estimate.summary_lines(bound)[1] and "上限" in estimate.summary_lines(bound, "zh")[1]

    corpus = load_corpus(lab, from_dict(cfg))  # the trainer's own cache and split
    expected = 2 * input_tokens(corpus.docs(corpus.train_idx), 512)
    est = estimate.estimate(lab, cfg)
    assert est["train_tokens"] == expected
    assert est["train_steps"] == bound["train_steps"]
    assert bound["train_tokens"] > 3 * expected  # what the wall time was inflated by
    line = estimate.summary_lines(est)[1]
    assert "upper bound" not in line and "the documents' own tokens" in line
    # max_steps stops part-way: that share of the epochs' tokens
    cfg["train"]["max_steps"] = max(1, est["train_steps"] // 2)
    capped = estimate.estimate(lab, cfg)
    assert capped["train_tokens"] == int(expected * capped["train_steps"] / est["train_steps"])
