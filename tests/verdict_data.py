"""eval.json results with per-item data, for the tests of the verdict and of the prose and record that cite it."""

from __future__ import annotations


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
