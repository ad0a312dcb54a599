"""`data prepare` says how many tokens of documents longer than max_seq_len training never sees
(a document is one sample, cut at max_seq_len + 1 tokens with its <s> and </s>)."""

from __future__ import annotations

import json

import numpy as np

from lab_helpers import invoke, make_lab


def test_untrained_tokens_follow_the_samples():
    from training.data import sample_tokens, untrained_tokens

    docs = [np.arange(n) for n in (10, 65, 66, 200)]
    docs_cut, tokens_cut = untrained_tokens(np.array([len(d) for d in docs]), 64)
    assert (docs_cut, tokens_cut) == (2, sum(len(d) - len(sample_tokens(d, 64)) for d in docs)) == (2, 1 + 135)


def test_prepare_reports_what_truncation_drops(tmp_path, bundled_data):
    from corpus.tokenizer import load_tokenizer

    lab = make_lab(tmp_path / "lab", bundled_data)  # model.max_seq_len 64
    long_text = " ".join(f"The river number {i} flows into the sea." for i in range(40))
    texts = ["A short document.", long_text, "Another short one."]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = load_tokenizer(lab.data_dir / "tokenizer.json")
    dropped = len(tok.encode(long_text).ids) + 2 - 65  # <s> ... </s>, cut at 65
    assert dropped > 100
    result = invoke(lab, "data", "prepare", "--pretrain", str(path))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 of 3 documents are longer than max_seq_len 64" in text, result.output
    assert f"{dropped:,} of their tokens" in text and "never trained on" in text, result.output
