"""Evaluate a checkpoint and write eval.json (PRODUCT.md sections 5-7) and plots/loss.png.

  python -m training.evaluate --run-dir runs/V [--num-samples N] [--checkpoint P]
  python -m training.evaluate --model-path P --model-type T [--lab DIR] [--dim 512 --n_layers 8 ...]

With --run-dir the run's config.yaml gives data, eval settings and guardrails, the
checkpoint defaults to the best one (checkpoints/pretrain_{dim}.pth, else last.pth),
train loss is smoothed from metrics.jsonl, and state.json gets `evaluated: true`.
With --model-path (the lab's eval_model.py usage) they come from the lab's
minimind.yaml, train loss is measured on training documents, and eval.json is written
next to the checkpoint unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from minimind.errors import MinimindError

SIZE_OPTIONS = ("dim", "n_layers", "n_heads", "knowledge_num", "knowledge_length", "knowledge_dim")
EVAL_FILE = "eval.json"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, help="runs/V: evaluate this experiment")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate (default: the run's best, else last)")
    p.add_argument("--model-path", type=Path, help="any checkpoint or raw MiniMind state dict")
    p.add_argument("--model-type", help="preset/alias (model, model_original, ...) or snapshot module (model_1_4_8)")
    p.add_argument("--lab", type=Path, help="lab root for --model-path (default: MINIMIND_LAB or the current lab)")
    p.add_argument("--out", type=Path, help="where eval.json goes (default: the run dir, or next to --model-path)")
    p.add_argument("--num-samples", type=int, help="held-out samples for inference loss and continuations")
    p.add_argument("--max-probes", type=int, default=300, help="probes scored per recall split (default 300)")
    for name in SIZE_OPTIONS:
        p.add_argument(f"--{name}", type=int, help=f"model {name} for a raw state dict")
    args = p.parse_args(argv)
    if not args.run_dir and not args.model_path:
        p.error("give --run-dir or --model-path")
    if args.num_samples is not None and args.num_samples < 1:
        p.error("--num-samples must be at least 1")
    return args


def _target(args: argparse.Namespace):
    """(lab, ExperimentConfig, checkpoint path, out path, run_dir or None)."""
    from minimind.config import CONFIG_FILE, from_dict, load_config
    from minimind.lab import Lab, find_lab
    from minimind.schema import to_dict

    if args.run_dir:
        run_dir = args.run_dir.resolve()
        cfg = load_config(run_dir / CONFIG_FILE)
        lab = Lab(run_dir.parent.parent)
        path = args.checkpoint or args.model_path
        if path is None:
            from training.checkpoint import CHECKPOINTS, LAST, best_name

            best = run_dir / CHECKPOINTS / best_name(int(cfg.model.get("dim", 512)))
            path = best if best.exists() else run_dir / CHECKPOINTS / LAST
        return lab, cfg, Path(path), args.out or run_dir / EVAL_FILE, run_dir
    lab = Lab(args.lab.resolve()) if args.lab else find_lab()
    settings = lab.settings()
    cfg = from_dict({"version": "0.0.0", "model_module": "model", "model": {},
                     **{k: to_dict(getattr(settings, k)) for k in ("train", "data", "eval", "guardrails", "launch")}},
                    where=str(lab.settings_path))
    out = args.out or args.model_path.with_name(args.model_path.stem + ".eval.json")
    return lab, cfg, args.model_path, out, None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        from training.evalrun import evaluate

        lab, cfg, ckpt_path, out, run_dir = _target(args)
        overrides = {name: getattr(args, name) for name in SIZE_OPTIONS}
        result = evaluate(lab, cfg, ckpt_path, args.model_type, overrides, out, run_dir,
                          num_samples=args.num_samples, max_probes=args.max_probes)
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(summary_line(result), flush=True)
    print(f"wrote {out}", flush=True)
    return 0


def summary_line(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "n/a"

    recall = " ".join(f"{k}:{f(v.get('p_at_1'))}" for k, v in (r.get("recall") or {}).items())
    return (f"val_loss {f(r['val_loss'])} inference_loss {f(r['inference_loss'])} train_loss {f(r['train_loss'])} "
            f"ratio {f(r['train_inference_ratio'])} repetition {f(r['repetition_rate'])} "
            f"entropy {f(r['memory_entropy'])} recall P@1 {recall or 'n/a'} (at {time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    raise SystemExit(main())
