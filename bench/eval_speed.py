"""Evaluation speed at the demo's size: today's item-by-item measures against the batched ones.

    python bench/eval_speed.py [--lab DIR] [--threads N] [--max-probes 300] [--train-steps 0] [--device cuda]

It makes a lab from `minimind demo`'s settings (lifecycle/demo.py DEMO_SETTINGS) with the
bundled small data, and a model of the demo's size (the memory preset, its bank loaded from
the knowledge file; seeded random weights unless --train-steps trains it first: an untrained
model rarely says </s>, so every continuation runs to max_new_tokens, the longest case).
Then it times each part of `training.evaluate` twice, with bench/eval_baseline.py (the
measures as they were: one model call per prompt, probe and decoded token, one host read
per document, token and candidate) and with training.measures (batched), checks that both
give the same numbers, and prints one JSON: seconds per part, old and new, and the speed-up.

The parts: validation loss, inference decoding (the KV-cached inference loss), samples
(greedy and sampled continuations), recall, chat QA (with the SFT loss) and retrieval, at the
lab's own eval settings (eval.num_samples 12, max_new_tokens 32, max_val_batches 10,
chat_probes 40, and evaluate's default of 300 probes per recall split).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PARTS = ("validation loss", "inference decoding", "samples", "recall", "chat QA", "retrieval")
# Floats may differ by the rounding of batched fp32 matrix products (a row's sums are formed
# in another order when the matrix has more rows): a few units in the 7th digit of a loss.
REL_TOL, ABS_TOL = 1e-5, 1e-5


def demo_lab(root: Path):
    """A fresh lab with the demo's settings and the bundled small data."""
    from corpus.build import build
    from lifecycle.demo import DEMO_SETTINGS
    from lifecycle.init import init_lab

    lab = init_lab(root, DEMO_SETTINGS.format(steps=240, eval_interval=80))
    build(lab.data_dir, "small", progress=False)
    return lab


def prepared_lab(root: Path):
    """(lab, config) at `root`: made there the first time (demo_lab, lab_config, written as
    runs/bench/config.yaml), reused after, so a machine without the data build's packages
    (a GPU box) can run the bench in a lab made elsewhere."""
    import yaml

    from minimind.config import load_config
    from minimind.lab import Lab

    path = root / "runs" / "bench" / "config.yaml"
    if not path.is_file():
        cfg = lab_config(demo_lab(root))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return Lab(root), load_config(path)


def lab_config(lab):
    """The ExperimentConfig `new` would write for a first experiment of this lab."""
    from lifecycle.knowledge.bases import base_config
    from models.registry import model_schema
    from minimind.config import from_dict

    model_cls, _ = model_schema(lab)
    return from_dict({"version": "0.1.0", "model_module": "model", **base_config(lab, lab.settings(), None, model_cls)})


def demo_model(lab, cfg, train_steps: int = 0):
    """The demo's model with its bank loaded; trained for `train_steps` steps on the lab's data when asked."""
    import torch

    from models.registry import build_model
    from training.data import collate
    from training.measures import masked_ce
    from training.runtime import load_bank_into, load_corpus

    torch.manual_seed(cfg.train.seed)
    model = build_model(lab.models_dir, cfg.model_module, cfg.model)
    load_bank_into(model, lab, cfg)
    if train_steps:
        corpus = load_corpus(lab, cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
        model.train()
        bs = cfg.train.batch_size
        for step in range(train_steps):
            start = (step * bs) % max(1, len(corpus.train_idx) - bs)
            inputs, targets, mask = collate(corpus.docs(corpus.train_idx[start:start + bs]), model.config.max_seq_len)
            out = model(inputs)
            loss = masked_ce(out.logits, targets, mask) + out.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def part_calls(impl, lab, cfg, model, tokenizer, max_probes: int) -> dict[str, Callable[[], Any]]:
    """{part: a call measuring it with `impl`} (impl: training.measures + training.sft, or eval_baseline)."""
    from corpus.knowledge import bank_rows
    from training import measures
    from training.runtime import load_corpus, load_probes

    corpus = load_corpus(lab, cfg)
    val_docs = corpus.docs(corpus.val_idx)
    max_seq_len = model.config.max_seq_len
    pairs = measures.eval_pairs(val_docs, cfg, max_seq_len)
    prompts = [p for p, _ in pairs]
    probes = load_probes(lab, cfg)
    rows = bank_rows(lab.resolve(cfg.data.knowledge), model.config.knowledge_num)
    sft = impl.sft if hasattr(impl, "sft") else impl

    def items(call):
        def run():
            found: dict[str, Any] = {}
            return call(found), found
        return run

    return {
        "validation loss": lambda: impl.val_loss_items(model, val_docs, max_seq_len, cfg.train.batch_size,
                                                       cfg.eval.max_val_batches),
        "inference decoding": lambda: impl.inference_loss_items(model, pairs),
        "samples": lambda: (impl.continuations(model, prompts, cfg.eval.max_new_tokens),
                            impl.continuations(model, prompts, cfg.eval.max_new_tokens, temperature=cfg.eval.temperature,
                                               top_p=cfg.eval.top_p, seed=cfg.train.seed)),
        "recall": items(lambda found: impl.recall(model, tokenizer, probes, max_probes, cfg.train.seed, found)),
        "chat QA": lambda: sft.sft_measures(model, tokenizer, lab, cfg, probes, cfg.train.seed),
        "retrieval": items(lambda found: impl.retrieval(model, tokenizer, probes, rows, max_probes, cfg.train.seed,
                                                        found)),
    }


class _New:
    """training.measures with training.sft's chat QA: the batched implementation."""

    def __init__(self):
        from training import measures, sft

        self.measures, self.sft = measures, sft

    def __getattr__(self, name):
        return getattr(self.measures, name)


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Where two results differ: floats beyond REL_TOL/ABS_TOL, anything else at all."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) != set(new):
            return [f"{where}: keys {sorted(set(old) ^ set(new))}"]
        return [d for k in old for d in differences(old[k], new[k], f"{where}.{k}")]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        if len(old) != len(new):
            return [f"{where}: length {len(old)} != {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, float):
        return [] if math.isclose(old, new, rel_tol=REL_TOL, abs_tol=ABS_TOL) else [f"{where}: {old!r} != {new!r}"]
    return [] if old == new and type(old) is type(new) else [f"{where}: {old!r} != {new!r}"]


def float_gap(old: Any, new: Any) -> float:
    """The largest relative difference between corresponding floats of two results."""
    if isinstance(old, dict) and isinstance(new, dict):
        return max([float_gap(old[k], new[k]) for k in old if k in new], default=0.0)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return max([float_gap(a, b) for a, b in zip(old, new)], default=0.0)
    if isinstance(old, float) and isinstance(new, float) and math.isfinite(old) and math.isfinite(new):
        return abs(old - new) / max(abs(old), abs(new), 1e-12)
    return 0.0


def compare(lab, cfg, model, tokenizer, max_probes: int = 300, parts=PARTS) -> dict[str, Any]:
    """{part: {old_s, new_s, speedup, max_relative_gap, differences}} and the totals, each part run old then new."""
    import eval_baseline

    calls = {"old": part_calls(eval_baseline, lab, cfg, model, tokenizer, max_probes),
             "new": part_calls(_New(), lab, cfg, model, tokenizer, max_probes)}
    out: dict[str, Any] = {}
    for part in parts:
        timed = {}
        for which in ("old", "new"):
            started = time.perf_counter()
            result = calls[which][part]()
            timed[which] = (time.perf_counter() - started, result)
        (old_s, old), (new_s, new) = timed["old"], timed["new"]
        out[part] = {"old_s": round(old_s, 3), "new_s": round(new_s, 3), "speedup": round(old_s / max(new_s, 1e-9), 2),
                     "max_relative_gap": float(f"{float_gap(old, new):.2e}"), "differences": differences(old, new, part)}
    old_total = sum(v["old_s"] for v in out.values())
    new_total = sum(v["new_s"] for v in out.values())
    out["total"] = {"old_s": round(old_total, 3), "new_s": round(new_total, 3),
                    "speedup": round(old_total / max(new_total, 1e-9), 2)}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", type=Path, help="lab folder to make, or to reuse once made (default: a temporary one)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--max-probes", type=int, default=300, help="probes per recall/retrieval split (evaluate's default)")
    p.add_argument("--train-steps", type=int, default=0, help="train the model this many steps first (default: untrained)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    import torch

    from corpus.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.lab or Path(tempfile.mkdtemp(prefix="minimind-evalspeed-")) / "lab"
    lab, cfg = prepared_lab(root)
    model = demo_model(lab, cfg, args.train_steps).to(args.device)
    tokenizer = load_tokenizer(lab.resolve(cfg.data.tokenizer))
    result = compare(lab, cfg, model, tokenizer, args.max_probes)
    result["setup"] = {"model": {k: cfg.model.get(k) for k in ("preset", "dim", "n_layers", "max_seq_len",
                                                                "knowledge_num", "num_candidates")},
                       "eval": {k: getattr(cfg.eval, k) for k in ("num_samples", "max_new_tokens", "max_val_batches",
                                                                  "chat_probes", "chat_max_new_tokens")},
                       "max_probes": args.max_probes, "train_steps": args.train_steps,
                       "threads": torch.get_num_threads(), "device": args.device, "torch": torch.__version__}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    same = all(not v.get("differences") for v in result.values() if isinstance(v, dict))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
