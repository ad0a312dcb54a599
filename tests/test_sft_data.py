"""Conversations for SFT: MiniMind's JSONL format, chat templates, the assistant-only loss mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corpus.sft import SftCache, prepare_sft, render_minimind2
from corpus.tokenizer import decode, load_tokenizer, train_tokenizer
from minimind.errors import MinimindError
from training.data import collate, input_tokens

CONV = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Japan?"},
        {"role": "assistant", "content": "Tokyo."}]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = ["Capital of France? Paris. And of Japan? Tokyo. You answer briefly. system user assistant"] * 50
    train_tokenizer(texts, vocab_size=400).save(str(path))
    return path


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def line(turns) -> str:
    return json.dumps({"conversations": turns}, ensure_ascii=False)


def targets_text(tok, ids, flags) -> list[str]:
    """The flagged spans, decoded with their special tokens."""
    spans, current = [], []
    for token, flag in zip(ids.tolist(), flags.tolist()):
        if flag:
            current.append(token)
        elif current:
            spans.append(decode(tok, current, skip_special=False))
            current = []
    if current:
        spans.append(decode(tok, current, skip_special=False))
    return spans


def test_minimind2_template_and_loss_only_on_assistant_replies(tmp_path, tokenizer_path):
    assert render_minimind2(CONV[1:3], False) == "<s>user\nCapital of France?</s>\n<s>assistant\nParis.</s>\n"
    cache = prepare_sft(write(tmp_path / "sft.jsonl", [line(CONV)]), tokenizer_path, tmp_path / "cache",
                        progress=False)
    tok = load_tokenizer(tokenizer_path)
    ids, flags = cache.doc(0)
    assert decode(tok, ids, skip_special=False) == render_minimind2(CONV, False)
    assert targets_text(tok, ids, flags) == ["Paris.</s>\n", "Tokyo.</s>\n"]
    assert cache.meta["target_tokens"] == int(flags.sum()) and cache.meta["chat_template"] == "minimind2"
    inputs, targets, mask = collate([cache.doc(0)], 512)
    learned = targets[0][mask[0] > 0].tolist()  # the predicted tokens the loss sees
    assert decode(tok, learned, skip_special=False) == "Paris.</s>\nTokyo.</s>\n"
    assert isinstance(SftCache(cache.path).doc(0), tuple)


def test_tokenizer_config_chat_template_is_honoured(tmp_path, tokenizer_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": (
        "{% for m in messages %}{{ bos_token }}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token }}[assistant] {% endif %}")}))
    cache = prepare_sft(write(tmp_path / "sft.jsonl", [line(CONV[1:3])]), tokenizer_path, tmp_path / "cache",
                        tokenizer_config=config, progress=False)
    tok = load_tokenizer(tokenizer_path)
    ids, flags = cache.doc(0)
    assert decode(tok, ids, skip_special=False) == "<s>[user] Capital of France?</s><s>[assistant] Paris.</s>"
    assert targets_text(tok, ids, flags) == ["Paris.</s>"]
    default = prepare_sft(tmp_path / "sft.jsonl", tokenizer_path, tmp_path / "cache", progress=False)
    assert default.path != cache.path  # the template is part of the cache key


def test_bad_line_by_number_blank_skipped_nothing_truncated(tmp_path, tokenizer_path):
    good = [line(CONV[1:3])] * 60
    lines = good[:10] + ['{"conversations": [{"role": "user", "content": "no reply"}]}'] + good[10:20] + [""] \
        + good[20:30] + ["   "] + good[30:]
    source = write(tmp_path / "sft.jsonl", lines)
    with pytest.raises(MinimindError, match=r"1 of 61 lines are malformed .*lines 11$"):
        prepare_sft(source, tokenizer_path, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").iterdir())  # refused: no cache published to train on
    cache = prepare_sft(source, tokenizer_path, tmp_path / "cache", max_bad_share=0.05, progress=False)
    assert cache.bad_lines == [11] and cache.meta["blank_lines"] == 2 and cache.num_docs == 60
    assert cache.meta["bad_reasons"] == {"no assistant reply": 1} and cache.meta["num_lines"] == 63


def test_malformed_turns_are_named(tmp_path, tokenizer_path):
    lines = ["not json", json.dumps({"text": "pretraining line"}),
             line([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]), line(CONV[1:3])]
    cache = prepare_sft(write(tmp_path / "s.jsonl", lines), tokenizer_path, tmp_path / "cache", max_bad_share=1.0,
                        progress=False)
    assert cache.bad_lines == [1, 2, 3] and cache.num_docs == 1
    assert set(cache.meta["bad_reasons"]) == {"invalid JSON", "no \"conversations\" list",
                                              "a turn without role system/user/assistant and string content"}


def test_pretraining_documents_still_collate_everywhere():
    inputs, targets, mask = collate([np.array([1, 5, 6, 2], dtype=np.uint16), np.array([1, 7, 2], dtype=np.uint16)], 16)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_throughput_counts_every_real_input_token_not_only_the_loss_carrying_ones():
    # the compute estimate counts a conversation's prompt and reply tokens, so tokens/s must too
    docs = [(np.array([1, 5, 6, 7, 8, 2], dtype=np.uint16), np.array([0, 0, 0, 1, 1, 1], dtype=np.uint8)),
            np.array([1, 7, 2], dtype=np.uint16), np.arange(40, dtype=np.uint16)]
    inputs, targets, mask = collate(docs, 16, pad_multiple=8)
    assert input_tokens(docs, 16) == 5 + 2 + 16  # the long document is cut at max_seq_len
    assert mask.sum() == 3 + 2 + 16  # the loss sees only the reply of the conversation
    assert input_tokens(docs, 16) < inputs.numel()  # padding is not counted


def test_data_prepare_sft_command_reports_bad_and_blank_lines(tmp_path, tokenizer_path):
    from lab_helpers import invoke
    from lifecycle.init import init_lab

    lab = init_lab(tmp_path / "lab", "")
    good = [line(CONV[1:3])] * 30
    source = write(tmp_path / "sft.jsonl", good[:5] + ["{oops"] + good[5:] + [" "])
    refused = invoke(lab, "data", "prepare", "--sft", str(source), "--tokenizer", str(tokenizer_path))
    assert refused.exit_code == 1 and "lines 6" in refused.output and "1 of 31 lines" in refused.output
    (lab.root / "minimind.yaml").write_text("data:\n  max_bad_share: 0.05\n")
    done = invoke(lab, "data", "prepare", "--sft", str(source), "--tokenizer", str(tokenizer_path))
    assert done.exit_code == 0, done.output
    assert "conversations: 30" in done.output and "1 blank line(s) skipped" in done.output
    assert "1 malformed line(s) skipped: 6" in done.output
