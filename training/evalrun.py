"""Compute eval.json for one checkpoint (the body of `training.evaluate`).

Keys (all numbers finite; null where a value does not exist for this model):
  val_loss, inference_loss, train_loss (+ train_loss_source), train_inference_ratio,
  repetition_rate (seq-rep-4 of greedy continuations), distinct_2, memory_entropy,
  memory_coverage, memory {all memory stats of the validation pass}, recall {split:
  {p_at_1, mrr, n, p_at_1_ci, mrr_ci, chance_p_at_1}}, samples [{prompt, reference,
  generated, sampled}], guardrails {name: {value, level}}, checkpoint, module, step,
  num_samples, time, version, model_config.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from agent import guardrails as rules
from minimind.atomic import write_json
from minimind.config import ExperimentConfig
from minimind.lab import Lab
from minimind.state import update_state
from training import measures
from training.evalstep import eval_pairs
from training.metrics import clean, read_rows
from training.modelload import load_for_eval
from training.runtime import load_corpus, load_probes
from training.textstats import distinct_n, repetition_rate

METRICS_FILE = "metrics.jsonl"


def _train_loss(cfg: ExperimentConfig, run_dir: Optional[Path], model, corpus, max_seq_len: int) -> tuple[Optional[float], str]:
    """Smoothed from the run's metrics when there are any, else measured on training docs."""
    if run_dir is not None:
        rows = [r for r in read_rows(run_dir / METRICS_FILE) if "loss_ce" in r]
        value = rules.smoothed_train_loss([r["loss_ce"] for r in rows], cfg.guardrails.smoothing_window)
        if value is not None:
            return value, f"metrics.jsonl (mean of last {min(len(rows), cfg.guardrails.smoothing_window)} logged steps)"
    docs = corpus.docs(corpus.train_idx[: cfg.train.batch_size * cfg.eval.max_val_batches])
    return measures.val_loss(model, docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches), \
        "measured on training documents (teacher-forced)"


def _samples(model, tokenizer, pairs, cfg: ExperimentConfig) -> tuple[list[dict], list[list[int]]]:
    greedy = measures.continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens)
    sampled = measures.continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens,
                                     temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=cfg.train.seed)
    decode = (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)) if tokenizer else str
    samples = [{"prompt": decode(p), "reference": decode(r), "generated": decode(g), "sampled": decode(s)}
               for (p, r), g, s in zip(pairs, greedy, sampled)]
    return samples, greedy


def evaluate(lab: Lab, cfg: ExperimentConfig, checkpoint: Path, model_type: Optional[str],
             overrides: dict[str, Any], out: Path, run_dir: Optional[Path],
             num_samples: Optional[int] = None, max_probes: int = 300) -> dict[str, Any]:
    from corpus.tokenizer import load_tokenizer

    if cfg.launch.threads:
        torch.set_num_threads(cfg.launch.threads)
    if num_samples:
        cfg.eval.num_samples = num_samples
    model, data, module, model_config = load_for_eval(lab, checkpoint, model_type, overrides)
    cfg.model = model_config  # eval_pairs and max_seq_len read the model's real config
    max_seq_len = int(model_config.get("max_seq_len", 512))
    corpus = load_corpus(lab, cfg)
    tokenizer = load_tokenizer(lab.resolve(cfg.data.tokenizer))
    val_docs = corpus.docs(corpus.val_idx)

    stats = getattr(model, "memory_stats", None)
    if stats:
        stats(reset=True)
    val_loss = measures.val_loss(model, val_docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches)
    memory = (stats(reset=True) if stats else {}) or {}
    pairs = eval_pairs(val_docs, cfg)
    inference_loss = measures.inference_loss(model, pairs)
    samples, greedy = _samples(model, tokenizer, pairs, cfg)
    train_loss, source = _train_loss(cfg, run_dir, model, corpus, max_seq_len)
    probes = load_probes(lab, cfg)
    recall = measures.recall(model, tokenizer, probes, max_probes, cfg.train.seed) if probes else {}

    result: dict[str, Any] = {
        "val_loss": val_loss,
        "inference_loss": inference_loss,
        "train_loss": train_loss,
        "train_loss_source": source,
        "train_inference_ratio": inference_loss / train_loss if inference_loss is not None and train_loss else None,
        "repetition_rate": repetition_rate(greedy, 4),
        "distinct_2": distinct_n(greedy, 2),
        "memory_entropy": memory.get("entropy"),
        "memory_coverage": memory.get("coverage"),
        "memory": {k: float(v) for k, v in memory.items()},
        "recall": recall,
        "samples": samples,
    }
    values = {name: result[name] for name in rules.ALL_GUARDRAILS}
    result["guardrails"] = rules.levels_only(rules.evaluate(values, cfg.guardrails))
    result.update({
        "checkpoint": str(checkpoint), "module": module, "step": data.get("step"),
        "num_samples": len(pairs), "version": cfg.version if run_dir else None,
        "model_config": model_config, "time": time.time(),
    })
    result = clean(result)
    write_json(out, result)
    if run_dir is not None:
        _finish_run(run_dir, result)
    return result


def _finish_run(run_dir: Path, result: dict[str, Any]) -> None:
    """state.json flags and the loss picture of the run."""
    from training.plots import plot_run

    rows = read_rows(run_dir / METRICS_FILE)
    if rows:
        plot_run(rows, run_dir / "plots" / "loss.png", f"{run_dir.name}: training loss")
    update_state(run_dir, evaluated=True, eval_time=result["time"], eval_guardrails=result["guardrails"])
