"""The batched evaluation gives today's numbers, and reads back a constant per batch.

bench/eval_baseline.py keeps the measures as they were (one model call per prompt, probe
and decoded token); bench/eval_speed.py's `compare` runs every part of the evaluation both
ways on one model. Floats may differ by the rounding of batched fp32 products
(bench/eval_speed.py REL_TOL); tokens, ranks, hits and counts must be identical.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import helpers_train as h
from test_host_syncs import HostSyncs

sys.path.insert(0, str(h.REPO / "bench"))

import eval_baseline  # noqa: E402
import eval_speed  # noqa: E402

# Prompts of several lengths (documents shorter than prompt_tokens + 1 are split in half),
# more of them than one decode batch would need to be one length, and chat QA on.
EVAL = {"num_samples": 10, "prompt_tokens": 60, "max_new_tokens": 12, "max_val_batches": 2, "chat_probes": 6,
        "chat_max_new_tokens": 10}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bundled_data):
    from corpus.tokenizer import load_tokenizer
    from minimind.config import load_config
    from minimind.lab import Lab

    root = h.make_lab(tmp_path_factory.mktemp("lab"), bundled_data)
    for name in ("sft_eval.jsonl", "sft_split.json"):
        if (bundled_data / name).exists():
            shutil.copyfile(bundled_data / name, root / "data" / name)
    run_dir = h.write_config(root, eval=EVAL)
    lab, cfg = Lab(root), load_config(run_dir / "config.yaml")
    model = eval_speed.demo_model(lab, cfg)
    with torch.no_grad():  # a model that often says </s>: some rows stop early, others run to the end
        model.tok_embeddings.weight[2] *= 6.0
    return lab, cfg, model, load_tokenizer(lab.resolve(cfg.data.tokenizer))


def test_batched_evaluation_equals_todays(setup):
    lab, cfg, model, tokenizer = setup
    torch.set_num_threads(1)
    result = eval_speed.compare(lab, cfg, model, tokenizer, max_probes=30)
    for part in eval_speed.PARTS:
        assert result[part]["differences"] == [], (part, result[part]["differences"][:5])
    assert result["recall"]["old_s"] > 0 and result["chat QA"]["old_s"] > 0


def test_candidate_scores_through_the_prompts_cache_equal_the_full_sequences(setup):
    from training import measures
    from training.runtime import load_probes

    lab, cfg, model, tokenizer = setup
    probes = load_probes(lab, cfg)

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    items = [(encode(p["prompt"]), [encode(" " + o) for o in [p["answer"], *p["distractors"]]] + [[]])
             for split in probes.values() for p in split[:6]]
    with measures.evaluating(model):
        for prompt, candidates in items:
            old = eval_baseline.candidate_scores(model, prompt, candidates[:-1])  # it fails on an empty one
            new = measures.candidate_scores(model, prompt, candidates)
            assert new[:-1] == pytest.approx(old, rel=eval_speed.REL_TOL, abs=eval_speed.ABS_TOL)
            assert new[-1] == 0.0  # the empty candidate
        # many probes of one prompt length in one call give each probe's own scores
        length = len(items[0][0])
        same = [it for it in items if len(it[0]) == length]
        together = measures.candidate_scores_batch(model, same).tolist()
        alone = [s for it in same for s in measures.candidate_scores(model, *it)]
        assert together == pytest.approx(alone, rel=eval_speed.REL_TOL, abs=eval_speed.ABS_TOL)


def _pairs(lab, cfg, model):
    from training import measures
    from training.runtime import load_corpus

    corpus = load_corpus(lab, cfg)
    return corpus.docs(corpus.val_idx), measures.eval_pairs(corpus.docs(corpus.val_idx), cfg, model.config.max_seq_len)


def test_the_comparison_covers_several_prompt_lengths_and_both_endings(setup):
    from training import measures

    lab, cfg, model, _ = setup
    _, pairs = _pairs(lab, cfg, model)
    prompts = [p for p, _ in pairs]
    assert len(measures._length_groups([len(p) for p in prompts])) > 1  # batches of several lengths
    rows = measures.generated_rows(model, prompts, cfg.eval.max_new_tokens)
    ended = [2 in r for r in rows]
    assert any(ended) and not all(ended), ended


def count(call) -> int:
    with HostSyncs() as syncs:
        call()
    return syncs.total


def test_evaluation_reads_back_a_constant_per_batch_not_per_item(setup):
    from training import measures

    lab, cfg, model, tokenizer = setup
    torch.set_num_threads(1)
    docs, pairs = _pairs(lab, cfg, model)
    seq = model.config.max_seq_len
    # teacher-forced loss: one read for the whole pass, however many documents and batches
    # (before: one per document and one per document's token count)
    assert count(lambda: measures.val_loss_items(model, docs, seq, 4, 1)) == 1
    assert count(lambda: measures.val_loss_items(model, docs, seq, 4, 3)) == 1
    assert count(lambda: eval_baseline.val_loss_items(model, docs, seq, 4, 3)) == 24  # today's: 2 per document
    # inference loss through the KV cache: one read in all (before: one per reference token)
    assert count(lambda: measures.inference_loss_items(model, pairs)) == 1
    tokens = sum(len(r) for _, r in pairs)
    assert count(lambda: eval_baseline.inference_loss_items(model, pairs)) == tokens
    # decoding: per batch of prompts one read of its tokens and one "all ended?" per DONE_CHECK_STEPS steps
    prompts = [p for p, _ in pairs]
    batches = len(measures._length_groups([len(p) for p in prompts]))
    steps = cfg.eval.max_new_tokens
    limit = batches * (1 + -(-steps // measures.DONE_CHECK_STEPS))
    assert count(lambda: measures.continuations(model, prompts, steps)) <= limit
    assert count(lambda: measures.continuations(model, prompts, steps, temperature=0.8, top_p=0.9, seed=3)) <= limit
    assert count(lambda: measures.continuations(model, prompts[:1] * 40, steps)) <= 1 + -(-steps // measures.DONE_CHECK_STEPS)
    # recall and retrieval: one read per split, whatever the number of probes and candidates
    from corpus.knowledge import bank_rows
    from training.runtime import load_probes

    probes = load_probes(lab, cfg)
    assert count(lambda: measures.recall(model, tokenizer, probes, 30, 0)) == len(probes)
    assert count(lambda: eval_baseline.recall(model, tokenizer, probes, 30, 0)) > 30 * len(probes)
    rows = bank_rows(lab.resolve(cfg.data.knowledge), model.config.knowledge_num)
    asked = [s for s in measures.RETRIEVAL_SPLITS if any(True for _ in (probes.get(s) or []))]
    assert count(lambda: measures.retrieval(model, tokenizer, probes, rows, 30, 0)) <= len(asked)
