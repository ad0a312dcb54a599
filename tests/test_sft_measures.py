"""The SFT measures' pure parts: reply scoring, the chat split of a conversation, verdict names."""

from __future__ import annotations

import numpy as np

from minimind.verdict import compare_rows, decide, parse_criteria


def test_reply_hit_needs_the_answer_and_no_distractor():
    from training.sft import reply_hit

    assert reply_hit("The capital of France is Paris.", "Paris", ["Rome", "Berlin"])
    assert not reply_hit("The capital of France is Rome.", "Paris", ["Rome", "Berlin"])
    assert not reply_hit("Paris or Rome or Berlin.", "Paris", ["Rome", "Berlin"])  # listing is not answering
    assert not reply_hit("Parisian food", "Paris", [])  # a word, not a substring
    assert reply_hit("Guinea-Bissau borders Senegal.", "Guinea-Bissau", ["Guinea", "Mali"])
    assert reply_hit("it uses the euro", "Euro", ["Dollar"])


def test_reply_hit_does_not_count_the_subject():
    from training.sft import reply_hit

    # the answer sentence repeats the subject, which may be one of the distractors
    assert reply_hit("Spain borders France.", "France", ["Spain", "Mali"], subject="Spain")
    assert not reply_hit("Spain borders France.", "France", ["Spain", "Mali"])  # without the subject it is a miss
    assert not reply_hit("Spain borders Mali.", "France", ["Spain", "Mali"], subject="Spain")
    # a subject that contains the answer does not answer by itself
    assert not reply_hit("Kuwait City is in Asia.", "Kuwait", ["Iraq"], subject="Kuwait City")
    assert reply_hit("Kuwait City is in Kuwait.", "Kuwait", ["Iraq"], subject="Kuwait City")
    # only its first mention goes: a city named like its country is still answered
    assert reply_hit("Singapore is in Singapore.", "Singapore", ["Malaysia"], subject="Singapore")


def test_a_conversation_splits_at_its_first_reply():
    from training.measures import split_prompt

    tokens = np.array([1, 5, 6, 2, 1, 7, 8, 9, 2, 3], dtype=np.uint16)
    flags = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)
    assert split_prompt((tokens, flags), 30, 64) == ([1, 5, 6, 2, 1, 7], [8, 9, 2, 3])
    assert split_prompt((tokens, np.zeros(10, np.uint8)), 30, 64)[1] == []
    assert split_prompt((tokens, flags), 30, 7) == ([1, 5, 6, 2, 1, 7], [8, 9])  # cut at max_seq_len + 1


def test_verdict_reads_the_sft_metrics():
    keys = [f"capital:{i}" for i in range(20)]

    def ev(hits, ce, reply):  # eval.json with the per-item data sft_measures writes
        return {"sft_loss": sum(ce) / 20, "chat_qa": {"taught": {"accuracy": sum(hits) / 20}},
                "chat": {"mean_reply_tokens": reply},
                "per_item": {"chat_qa": {"taught": {"keys": keys, "hit": hits}},
                             "sft": {"keys": list(range(20)), "ce": ce, "tokens": [1] * 20}}}

    base = ev([1.0] * 2 + [0.0] * 18, [3.0 + 0.01 * i for i in range(20)], 9.0)
    new = ev([1.0] * 14 + [0.0] * 6, [1.0 + 0.01 * i for i in range(20)], 20.0)
    crits = parse_criteria("chat_qa.taught.accuracy > base and sft_loss < base and chat.stop_rate >= 0.5")
    assert [c.metric for c in crits] == ["chat_qa.taught.accuracy", "sft_loss", "chat.stop_rate"]
    verdict, reason = decide("h", "chat_qa.taught.accuracy > base and sft_loss < base", new, base)
    assert verdict == "supported", reason
    assert decide("h", "chat_qa.taught.accuracy > 0.95", new, base)[0] == "refuted"
    rows = {r["metric"]: r for r in compare_rows(new, base)}
    assert rows["chat_qa.taught.accuracy"]["better"] is True and rows["sft_loss"]["better"] is True
    assert rows["chat.mean_reply_tokens"]["better"] is None  # no direction and no items: shown, never ✅/❌
    assert decide("h", "chat_qa.taught.accuracy > base", new, {k: v for k, v in base.items() if k != "per_item"})[0] \
        == "inconclusive"  # no per-item data on one side: no interval, no verdict
    assert parse_criteria("chat_qa.nonsense.accuracy > 0.1") == []
