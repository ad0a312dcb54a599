"""eval.json results with per-item data, and a record context built on them, for the tests of the
verdict and of the prose and record that cite it."""

from __future__ import annotations

from minimind.verdict import bank_reading, compare_rows, held_out_control


def measured(inference: list[float], val: list[float] | None = None, recall: dict | None = None, **over) -> dict:
    """An eval.json with per-item data: one loss per document (10 tokens each), hits per probe."""
    val = val if val is not None else inference
    recall = recall or {}
    out = {"val_loss": sum(val) / len(val), "inference_loss": sum(inference) / len(inference), "repetition_rate": 0.3,
           "recall": {split: {"p_at_1": sum(h) / len(h), "mrr": sum(h) / len(h), "n": len(h)} for split, h in recall.items()},
           "per_item": {"val": {"keys": list(range(len(val))), "ce": [10 * v for v in val], "tokens": [10] * len(val)},
                        "inference": {"keys": list(range(len(inference))), "ce": [10 * v for v in inference],
                                      "tokens": [10] * len(inference)},
                        "recall": {split: {"keys": [f"p{i}" for i in range(len(h))], "hit": h, "rr": h}
                                   for split, h in recall.items()}}}
    out.update(over)
    return out


NOISY = [4.0, 4.4, 3.9, 4.3, 4.1, 4.5, 3.8, 4.2]
BASE = measured(NOISY, recall={"mem_only": [0.0] * 40 + [1.0] * 4, "held_out": [0.0, 1.0] * 20})


def shifted(delta: float, **kw) -> dict:
    return measured([v + delta for v in NOISY], **kw)


def retrieved(hits: list[float], control: list[float], **over) -> dict:
    """An eval.json of a memory preset: the mem_only probes' own-entry hits and the control's."""
    n = len(hits)
    return measured(NOISY, retrieval={"num_candidates": 8, "memory_layers": 2, "knowledge_num": 256,
                                      "mem_only": {"n": n, "in_bank": n, "hit_at_1": 0.0, "hit_at_c": sum(hits) / n,
                                                   "control": {"hit_at_1": 0.0, "hit_at_c": sum(control) / n}}},
                    per_item={"retrieval": {"mem_only": {"keys": [f"p{i}" for i in range(n)], "hit_at_1": [0.0] * n,
                                                         "hit_at_c": hits, "control_hit_at_c": control}}}, **over)


def record_context(lang: str) -> dict:
    """The context a record template is rendered with: a finished, analysed memory experiment."""
    model = {"preset": "memory", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 6400,
             "max_seq_len": 64, "knowledge_num": 256, "knowledge_length": 8, "knowledge_dim": 16, "num_candidates": 8,
             "freeze_ratio": 0.2, "freeze_policy": "random", "ema_decay": 0.9, "ema_update_freq": 5}
    from minimind.settings import TrainConfig

    return {"r": {
        "version": "1.4.8", "base": "1.4.7", "state": "finished", "config_hash": "abc", "code_change": None, "snapshot": {"module": "model_1_4_8", "sha256": "f" * 64},
        "human": {"goal": "g\nline2", "hypothesis": "h", "expect": None, "base": "1.4.7"},
        "plan": {"thinking": "The base froze a fifth of the bank; a wider model tests whether capacity was the limit.", "changes": [{"key": "model.dim", "base": 32, "new": 64, "why": "w|x"}], "expected": "e",
                 "risks": ["r"], "backend": "offline", "note": ""},
        "git": {"commit": "abc", "dirty": True, "diff": "+x", "diff_truncated": False, "model_changed": True, "against": "HEAD"},
        "model": model, "train": TrainConfig(), "config_rows": [("model.dim", 64)], "has_memory": True,
        "execution": {"launched": True, "pid": 1, "pgid": 1, "started_at": "s", "ended_at": "e", "duration": "1s", "step": 10,
                      "total_steps": 10, "eta": None, "stop_reason": None, "resources": "1 process"},
        "training": {"available": True, "steps": 10, "first_loss": 5.0, "last_loss": 3.0, "min_loss": 2.9, "smoothed_loss": 3.1,
                     "tokens_per_s": 1000.0, "duration": "1s"},
        "evaluation": {"available": True, "rows": compare_rows(shifted(0), BASE), "control": held_out_control(shifted(0), BASE), "intervals_note": "n",
                       "retrieval": [{"split": "mem_only", "n": 40, "in_bank": 90, "c": 8, "hit_at_1": 0.1, "hit_at_1_ci": "[0.00, 0.20]",
                                      "hit_at_c": 0.5, "hit_at_c_ci": "[0.35, 0.65]", "mean_rank": 2.5, "control_hit_at_1": 0.0,
                                      "control_hit_at_c": 0.05, "control_hit_at_c_ci": "[0.00, 0.12]"}],
                       "bank_reading": bank_reading(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 38 + [1.0] * 2), lang=lang),
                       "guardrails": [{"name": "train_loss", "value": 3.0, "level": "safe", "light": "🟢"}],
                       "recall": [{"split": "mem_only", "n": 5, "p_at_1": 0.2, "mrr": 0.4, "p_ci": "[0.1, 0.3]"}],
                       "samples": [{"prompt": "p", "reference": "r", "generated": "g"}]},
        "eval_prompt_tokens": 30,
        "analysis": {"available": True, "training_results": "tr", "inference_evaluation": "ie", "deep_analysis": "da",
                     "conclusion": "c", "next_steps": ["n1"], "backend": "offline", "notes": []},
        "analysis_failed": False, "analysis_error": "",
        "preflight": {"checks": [{"id": "causality", "status": "passed", "lesson": "l", "detail": "d", "source": "s"}], "forced": False,
                      "reason": None, "compute_note": None, "compute_accepted": False},
        "estimate_lines": ["parameters: 1"],
        "verdict": {"verdict": "supported", "reason": "r", "verdict_zh": "支持"},
    }}
