"""Evaluate a checkpoint and write eval.json (PRODUCT.md sections 5-7) and plots/loss.png.

  python -m training.evaluate --run-dir runs/V [--num-samples N] [--checkpoint P]
  python -m training.evaluate --model-path P --model-type T [--lab DIR] [--dim 512 --n_layers 8 ...]

With --run-dir the run's config.yaml gives data, eval settings and guardrails, the
checkpoint defaults to the best one (checkpoints/pretrain_{dim}.pth, else last.pth),
train loss is smoothed from metrics.jsonl, and state.json gets `evaluated: true`.
With --model-path (the lab's eval_model.py usage) they come from the lab's
minimind.yaml (but a checkpoint inside runs/V is scored on that run's data and
validation split, and any other on the split `new` pins, data.split_seed), train loss
is measured on training documents, and eval.json is written next to the checkpoint
unless --out says otherwise.

`--model-type` follows the lab's eval_model.py: a preset or alias of the living
`models/model.py` (its PRESETS and PRESET_ALIASES, e.g. `original`/`model_original`,
`hybrid`/`model`) builds from that file; any other name is a snapshot module such as
`model_1_4_8`. A checkpoint that records its module and config needs neither; options
given on the command line override its config fields.

eval.json keys (all numbers finite; null where a value does not exist for this model):
  val_loss, inference_loss, train_loss (+ train_loss_source), train_inference_ratio,
  repetition_rate (seq-rep-4 of greedy continuations), distinct_2, memory_entropy (the
  worst memory layer's selection entropy: the guardrail's measure), memory_selection_distinct,
  memory_candidate_entropy (the candidate-softmax entropy; eval.json files written before it
  existed held that number in memory_entropy: minimind.guardrails.upgrade_eval reads them),
  memory_coverage, memory {all memory stats of the validation pass}, recall {split:
  {p_at_1, mrr, n, p_at_1_ci, mrr_ci, chance_p_at_1}}, retrieval (memory presets, else
  null: {num_candidates, memory_layers, knowledge_num, mem_only/both: {n, in_bank, hit_at_1,
  hit_at_c, hit_at_1_ci, hit_at_c_ci, mean_rank, control {hit_at_1, hit_at_c, *_ci}}}),
  retrieval_seconds, samples [{prompt, reference,
  generated, sampled, repetition}], per_item {val/inference: {keys, ce, tokens},
  repetition: {keys, values}, recall: {split: {keys, hit, rr}}, retrieval: {split: {keys,
  hit_at_1, hit_at_c, rank, control_hit_at_1, control_hit_at_c}}}, guardrails {name: {value, level}}, checkpoint, module, step,
  num_samples, time, version, model_config, stage, init;
  the SFT block (training/sft.py sft_measures, every stage where data.sft_eval and probes
  exist): sft_loss, chat_qa {split | taught | eval_only: {accuracy, n, accuracy_ci}},
  chat {stop_rate, mean_reply_tokens, repetition_rate, n}, chat_samples. For stage sft,
  val_loss/inference_loss/recall stay on the pretraining data (comparable with the base);
  train_loss is the SFT loss, so train_inference_ratio uses sft_inference_loss (replies of
  the SFT validation conversations through the KV cache).

torch and the model code are imported only once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import (CHECKPOINTS_DIR, CONFIG_FILE, EVAL_FILE, LAST_CHECKPOINT, METRICS_FILE, PLAN_FILE, PLOTS_DIR,
                             best_checkpoint, read_json, read_metrics, read_state, run_label, update_state)

SIZE_OPTIONS = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "knowledge_num", "knowledge_length",
                "knowledge_dim")
DATA_OPTIONS = ("pretrain", "tokenizer", "probes")  # the lab's data files, overridable per evaluation


# --- command line ---------------------------------------------------------------------

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    # Both spellings of every option: the lab's guide types eval_model.py's underscores.
    p.add_argument("--run-dir", "--run_dir", dest="run_dir", type=Path, help="runs/V: evaluate this experiment")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate (default: the run's best, else last)")
    p.add_argument("--model-path", "--model_path", dest="model_path", type=Path,
                   help="any checkpoint or raw MiniMind state dict")
    p.add_argument("--model-type", "--model_type", dest="model_type",
                   help="preset/alias (model, model_original, ...) or snapshot module (model_1_4_8)")
    p.add_argument("--lab", type=Path, help="lab root for --model-path (default: MINIMIND_LAB or the current lab)")
    p.add_argument("--out", type=Path, help=f"where {EVAL_FILE} goes (default: the run dir, or next to --model-path)")
    p.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int,
                   help="held-out samples for inference loss and continuations")
    p.add_argument("--max-probes", "--max_probes", dest="max_probes", type=int, default=300,
                   help="probes scored per recall split (default 300)")
    for name in SIZE_OPTIONS:
        p.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, type=int,
                       help=f"model {name} for a raw state dict")
    p.add_argument("--use-moe", "--use_moe", dest="use_moe", action="store_true",
                   help="the raw state dict is a MoE model (also inferred from its keys)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the lab's); overrides the checkpoint's check")
    p.add_argument("--pretrain", "--data", dest="pretrain", type=Path, help="pretraining JSONL for the held-out losses")
    p.add_argument("--probes", type=Path, help="probes.json for factual recall")
    args = p.parse_args(argv)
    if not args.run_dir and not args.model_path:
        p.error("give --run-dir or --model-path")
    if args.num_samples is not None and args.num_samples < 1:
        p.error("--num-samples must be at least 1")
    return args


def _target(args: argparse.Namespace):
    """(lab, ExperimentConfig, checkpoint path, out path, run_dir or None)."""
    from minimind.config import from_dict, load_config
    from minimind.lab import find_lab
    from minimind.schema import to_dict

    if args.run_dir:
        run_dir = args.run_dir.resolve()
        cfg = load_config(run_dir / CONFIG_FILE)
        lab = Lab.of_run(run_dir)
        path = args.checkpoint or args.model_path or _default_checkpoint(lab, cfg, run_dir)
        return lab, cfg, Path(path), args.out or run_dir / EVAL_FILE, run_dir
    lab = Lab(args.lab.resolve()) if args.lab else find_lab()
    settings = lab.settings()
    cfg = from_dict({"version": "0.0.0", "model_module": "model", "model": {},
                     **{k: to_dict(getattr(settings, k)) for k in ("train", "data", "eval", "guardrails", "launch")}},
                    where=str(lab.settings_path))
    owner = owning_run(lab, args.model_path)
    if owner is not None:  # a run's checkpoint is scored on the run's own documents and split
        from training.runtime import split_seed

        run_cfg = load_config(owner / CONFIG_FILE)
        cfg.data = run_cfg.data
        cfg.data.split_seed = split_seed(run_cfg)
    elif cfg.data.split_seed is None:  # the split `new` pins for this lab's experiments
        from minimind.settings import SPLIT_SEED

        cfg.data.split_seed = SPLIT_SEED
    out = args.out or args.model_path.with_name(args.model_path.stem + ".eval.json")
    return lab, cfg, args.model_path, out, None


def eval_seed(cfg) -> int:
    """The seed of the evaluation's draws: eval.draw_seed, else train.seed (replicates share their experiment's)."""
    return cfg.eval.draw_seed if cfg.eval.draw_seed is not None else cfg.train.seed


def owning_run(lab: Lab, checkpoint: Path) -> Optional[Path]:
    """runs/V when `checkpoint` lies inside that experiment's folder of this lab, else None."""
    try:
        parts = checkpoint.resolve().relative_to((lab.root / "runs").resolve()).parts
    except ValueError:
        return None
    run_dir = lab.root / "runs" / parts[0]
    return run_dir if len(parts) > 1 and (run_dir / CONFIG_FILE).is_file() else None


def _default_checkpoint(lab: Lab, cfg: ExperimentConfig, run_dir: Path) -> Path:
    """The run's best checkpoint, else its last one. The width (in the best one's name)
    is the model's own, defaults included, as the trainer named the file."""
    from models.registry import model_config

    dim = model_config(lab.models_dir, cfg.model_module, cfg.model).dim
    best = run_dir / CHECKPOINTS_DIR / best_checkpoint(dim, cfg.stage)
    return best if best.exists() else run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        lab, cfg, ckpt_path, out, run_dir = _target(args)
        overrides = {name: getattr(args, name) for name in SIZE_OPTIONS}
        if args.use_moe:
            overrides["use_moe"] = True
        for name in DATA_OPTIONS:
            if getattr(args, name) is not None:
                setattr(cfg.data, name, str(getattr(args, name).resolve()))
        result = evaluate(lab, cfg, ckpt_path, args.model_type, overrides, out, run_dir,
                          num_samples=args.num_samples, max_probes=args.max_probes,
                          explicit_tokenizer=args.tokenizer is not None)
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    if args.num_samples:
        print(samples_text(result["samples"]), flush=True)
    print(summary_line(result), flush=True)
    print(f"wrote {out}", flush=True)
    return 0


def samples_text(samples: list[dict[str, Any]]) -> str:
    """Each held-out prompt with the model's greedy continuation (and the sampled one, and the
    document's own text), as the lab guide's eval_model.py shows them."""
    lines = []
    for i, s in enumerate(samples, 1):
        lines += [f"[{i}/{len(samples)}] prompt:    {s['prompt']}", f"      continuation: {s['generated']}",
                  f"      sampled:      {s['sampled']}", f"      reference:    {s['reference']}", ""]
    return "\n".join(lines).rstrip()


# --- progress ---------------------------------------------------------------------------

PRINT_S = 10.0  # a running part prints its count at most this often
UNITS = {"validation loss": "documents", "train loss": "documents", "SFT loss": "conversations",
         "inference decoding": "references", "SFT inference decoding": "references", "samples": "continuations",
         "recall": "probes", "chat QA": "questions", "retrieval": "probes"}


class EvalProgress:
    """Where an evaluation is, part by part (validation loss, inference decoding, samples,
    recall, SFT loss, chat QA, retrieval).

    A line on stdout when a part starts, every PRINT_S seconds while it runs, and when it
    ends: stdout is the terminal of `minimind eval`, or train.log under the run pipeline,
    which `minimind log -f` follows. With a run directory, state.json's phase reads
    `evaluate: <part> <done>/<total>` and a heartbeat thread (training.signals.Heartbeat)
    rewrites it with the time, so `status` shows the part and its count and never calls a
    live evaluation hung. The phase the run had before is put back at the end."""

    def __init__(self, run_dir: Optional[Path]):
        self.run_dir = run_dir
        self.part: Optional[str] = None
        self.done = self.total = 0
        self.started = self.part_started = self.printed = time.monotonic()
        self.previous_phase = read_state(run_dir).phase if run_dir else None
        self.heartbeat = None
        if run_dir is not None:
            from training.signals import Heartbeat

            self.heartbeat = Heartbeat(run_dir, self.as_state)

    def phase(self) -> str:
        if self.part is None:
            return "evaluate"
        return f"evaluate: {self.part}" + (f" {self.done}/{self.total}" if self.total else "")

    def as_state(self) -> dict[str, Any]:
        return {"phase": self.phase()}

    def __enter__(self) -> "EvalProgress":
        if self.heartbeat is not None:
            self.heartbeat.beat()
            self.heartbeat.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self._end_part()
        if self.heartbeat is not None:
            self.heartbeat.stop()
            update_state(self.run_dir, heartbeat=time.time(), phase=self.previous_phase)

    def start(self, part: str):
        """Begin `part`; returns its progress callback (training.measures.Progress)."""
        self._end_part()
        self.part, self.done, self.total = part, 0, 0
        self.unit = UNITS.get(part, "")
        self.part_started = time.monotonic()
        self._say(f"{part} ...")
        if self.heartbeat is not None:
            self.heartbeat.beat()
        return self.tick

    def tick(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if time.monotonic() - self.printed >= PRINT_S and done < total:
            self._say(f"{self.part} {done}/{total} {self.unit}".rstrip())

    def _end_part(self) -> None:
        if self.part is not None:
            count = f"{self.done}/{self.total} {self.unit} ".replace("  ", " ") if self.total else ""
            self._say(f"{self.part} {count}done in {time.monotonic() - self.part_started:.1f} s")
            self.part = None

    def _say(self, text: str) -> None:
        self.printed = time.monotonic()
        print(f"[eval {self.printed - self.started:6.1f}s] {text}", flush=True)


def summary_line(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "n/a"

    recall = " ".join(f"{k}:{f(v.get('p_at_1'))}" for k, v in (r.get("recall") or {}).items())
    return (f"val_loss {f(r['val_loss'])} inference_loss {f(r['inference_loss'])} train_loss {f(r['train_loss'])} "
            f"ratio {f(r['train_inference_ratio'])} repetition {f(r['repetition_rate'])} "
            f"selection entropy {f(r['memory_entropy'])} (candidates {f(r.get('memory_candidate_entropy'))}) recall P@1 {recall or 'n/a'}"
            + (f" chat QA {chat}" if (chat := " ".join(f"{k}:{f(v.get('accuracy'))}" for k, v in (r.get("chat_qa") or {}).items())) else "")
            + f" (at {time.strftime('%H:%M:%S')})")


# --- which model -----------------------------------------------------------------------

def module_and_preset(lab: Lab, model_type: str) -> tuple[str, Optional[str]]:
    """(module name, preset or None) for a --model-type value."""
    from minimind.versions import is_module_name
    from models.registry import LIVING, preset_names

    if is_module_name(model_type) and model_type != LIVING:
        return model_type, None  # a snapshot: the living file, perhaps mid-edit, is not even imported
    names = preset_names(lab.models_dir)
    if model_type in names:  # 'model' is both the living module and an alias: the alias wins
        return LIVING, model_type
    if model_type == LIVING:
        return LIVING, None
    raise UsageError(f"--model-type {model_type!r}: expected a preset of models/model.py "
                     f"({', '.join(names)}) or a module name like model_1_4_8")


def _infer_from_weights(state: dict[str, Any]) -> dict[str, Any]:
    """Fields a raw state dict fixes by itself: width, depth, vocabulary, FFN width, MoE
    experts and (when there) the bank shape. Head counts are not in the weights."""
    from models.convert import shape_config

    stripped = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        stripped[key] = value
    return shape_config(stripped)


def _kv_heads_from_weights(state: dict[str, Any], config: dict[str, Any]) -> Optional[int]:
    """n_kv_heads of a raw state dict once n_heads is known: layer 0's key rows / head width."""
    wk = state.get("layers.0.attention.wk.weight")
    dim, heads = config.get("dim", 512), config.get("n_heads", 8)
    if wk is None or not hasattr(wk, "shape") or dim % heads:
        return None
    return int(wk.shape[0]) // (dim // heads) or None


def check_tokenizer(data: dict[str, Any], path: Path, tokenizer_path: Path, explicit: bool) -> Optional[str]:
    """Refuse to evaluate with a tokenizer other than the one the checkpoint was trained with.

    Checkpoints record the tokenizer's sha256; with --tokenizer given explicitly a mismatch is
    only a warning (returned), since the user asked for that file by name."""
    from models.registry import sha256_file

    recorded = data.get("tokenizer")
    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        return None
    actual = sha256_file(tokenizer_path)
    if actual == recorded["sha256"]:
        return None
    message = (f"{path} was trained with tokenizer {recorded.get('path')} (sha256 {recorded['sha256'][:12]}), "
               f"but evaluation would use {tokenizer_path} (sha256 {actual[:12]})")
    if not explicit:
        raise MinimindError(f"{message}; pass --tokenizer to evaluate with it anyway")
    return f"Warning: {message}"


def load_model(lab: Lab, path: Path, model_type: Optional[str], overrides: dict[str, Any]):
    """(model in eval mode, checkpoint dict, module name, model config dict); the file is read once."""
    from models import registry

    data = registry.read_checkpoint(path)
    module = data.get("module") if isinstance(data.get("module"), str) else None
    recorded = isinstance(data.get("model_config"), dict)
    config: dict[str, Any] = dict(data["model_config"]) if recorded else _infer_from_weights(registry.weights(data))
    if model_type:
        module, preset = module_and_preset(lab, model_type)
        if preset:
            config["preset"] = preset
    if module is None:
        raise UsageError(f"{path} is a raw state dict: give --model-type (a preset like 'model_original' "
                         f"or a snapshot module like 'model_1_4_8')")
    config.update({k: v for k, v in overrides.items() if v is not None})
    if not recorded and overrides.get("n_kv_heads") is None:
        kv = _kv_heads_from_weights(registry.weights(data), config)
        if kv is not None:
            config["n_kv_heads"] = kv
    try:
        model = registry.model_from_checkpoint(data, lab.models_dir, path, module_name=module, config=config)
    except MinimindError as exc:
        raise MinimindError(f"{exc} (check --model-type and the size options)") from None
    model.eval()
    return model, data, module, model.config.to_dict()


# --- eval.json -------------------------------------------------------------------------

def _train_loss(cfg: ExperimentConfig, run_dir: Optional[Path], model, corpus, max_seq_len: int,
                progress: Optional[EvalProgress] = None) -> tuple[Optional[float], str]:
    """Smoothed from the run's metrics when there are any, else measured on training docs."""
    from minimind import guardrails as rules
    from training import measures

    if run_dir is not None:
        rows = [r for r in read_metrics(run_dir / METRICS_FILE) if "loss_ce" in r]
        value = rules.smoothed_train_loss([r["loss_ce"] for r in rows], cfg.guardrails.smoothing_window)
        if value is not None:
            return value, f"{METRICS_FILE} (mean of last {min(len(rows), cfg.guardrails.smoothing_window)} logged steps)"
    docs = corpus.docs(corpus.train_idx[: cfg.train.batch_size * cfg.eval.max_val_batches])
    tick = progress.start("train loss") if progress else None
    return measures.val_loss(model, docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches, tick), \
        "measured on training documents (teacher-forced)"


def _samples(model, tokenizer, pairs, greedy, cfg: ExperimentConfig, tick=None) -> list[dict]:
    """Each pair with its greedy continuation (measured by measures.measure, the first of
    the samples part's two passes) and a sampled one: `tick` counts the second pass."""
    from training import measures

    n = len(pairs)
    sampled = measures.continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens,
                                     temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, seed=eval_seed(cfg),
                                     progress=tick and (lambda done, _: tick(n + done, 2 * n)))
    decode = (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)) if tokenizer else str
    return [{"prompt": decode(p), "reference": decode(r), "generated": decode(g), "sampled": decode(s)}
            for (p, r), g, s in zip(pairs, greedy, sampled)]


def evaluate(lab: Lab, cfg: ExperimentConfig, checkpoint: Path, model_type: Optional[str],
             overrides: dict[str, Any], out: Path, run_dir: Optional[Path],
             num_samples: Optional[int] = None, max_probes: int = 300,
             explicit_tokenizer: bool = False) -> dict[str, Any]:
    """Measure the checkpoint, write eval.json to `out`; with a run_dir also its plot and state."""
    import torch

    from training.runtime import autocast_for, enable_tf32, run_device, run_precision

    if cfg.launch.threads:
        torch.set_num_threads(cfg.launch.threads)
    if num_samples:
        cfg.eval.num_samples = num_samples
    model, data, module, model_config = load_model(lab, checkpoint, model_type, overrides)
    # where and how the trainer computes: the run's GPU (or CPU) under the run's precision
    device = run_device(cfg)
    model.to(device)
    enable_tf32(device)
    with autocast_for(device, run_precision(cfg)), EvalProgress(run_dir) as progress:
        return _measure(lab, cfg, checkpoint, model, data, module, model_config, out, run_dir, max_probes,
                        explicit_tokenizer, progress)


def _measure(lab: Lab, cfg: ExperimentConfig, checkpoint: Path, model, data: dict[str, Any], module: str,
             model_config: dict[str, Any], out: Path, run_dir: Optional[Path], max_probes: int,
             explicit_tokenizer: bool, progress: Optional[EvalProgress] = None) -> dict[str, Any]:
    from corpus.tokenizer import load_tokenizer
    from minimind import guardrails as rules
    from minimind.atomic import write_json
    from minimind.schema import to_dict
    from training import measures
    from training.metrics import clean
    from training.runtime import load_corpus, load_data, load_probes
    from training.sft import sft_measures

    max_seq_len = model.config.max_seq_len
    tokenizer_path = lab.resolve(cfg.data.tokenizer)
    if not tokenizer_path.is_file():
        raise MinimindError(f"tokenizer {tokenizer_path} not found (give --tokenizer, or run minimind data build)")
    warning = check_tokenizer(data, checkpoint, tokenizer_path, explicit_tokenizer)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.get_vocab_size() > model.config.vocab_size:  # ids the model cannot embed: not its tokenizer
        raise MinimindError(f"{checkpoint} has a vocabulary of {model.config.vocab_size}, tokenizer {tokenizer_path} "
                            f"one of {tokenizer.get_vocab_size()}: they do not belong together")
    corpus = load_corpus(lab, cfg)
    val_docs = corpus.docs(corpus.val_idx)

    progress = progress or EvalProgress(None)
    measured = measures.measure(model, val_docs, cfg, progress.start, decode_passes=2)
    pairs, greedy, memory = measured.pairs, measured.greedy, measured.memory
    samples = _samples(model, tokenizer, pairs, greedy, cfg, progress.tick)  # the samples part goes on
    probes = load_probes(lab, cfg)
    recall_items: dict[str, Any] = {}
    recall = measures.recall(model, tokenizer, probes, max_probes, eval_seed(cfg), recall_items,
                             progress.start("recall")) if probes else {}
    sft = sft_measures(model, tokenizer, lab, cfg, probes, eval_seed(cfg), progress.start)
    retrieval_items: dict[str, Any] = {}
    retrieval, retrieval_seconds = _retrieval(lab, cfg, model, tokenizer, probes, max_probes, retrieval_items, progress)
    # Per-item measurements keyed by document index / probe id: a comparison on the same
    # documents and probes gets a paired interval of its difference (minimind.verdict).
    doc_keys = [int(i) for i in corpus.val_idx]
    sample_keys = [k for k, d in zip(doc_keys, val_docs[: cfg.eval.num_samples])
                   if all(measures.split_prompt(d, cfg.eval.prompt_tokens, max_seq_len))]
    repetition = [measures.seq_rep_n(g, 4) for g in greedy]
    for sample, rep in zip(samples, repetition):
        sample["repetition"] = rep
    per_item = {
        "val": {"keys": doc_keys[: len(measured.val_ce)], "ce": measured.val_ce, "tokens": measured.val_tokens},
        "inference": {"keys": sample_keys, "ce": measured.inference_ce, "tokens": measured.inference_tokens},
        "repetition": {"keys": [k for k, r in zip(sample_keys, repetition) if r is not None],
                       "values": [r for r in repetition if r is not None]},
        "recall": recall_items,
        **sft.pop("per_item"),  # sft_loss per conversation, chat_qa hits per probe
        "retrieval": retrieval_items,
    }
    ratio_inference, sft_inference = measured.inference_loss, None
    if cfg.stage == "sft":  # train loss is on replies: the ratio compares it with replies through the KV cache
        conversations = load_data(lab, cfg)
        train_loss, source = _train_loss(cfg, run_dir, model, conversations, max_seq_len, progress)
        sft_inference = measures.inference_loss(model, measures.eval_pairs(conversations.docs(conversations.val_idx),
                                                                           cfg, max_seq_len),
                                                progress.start("SFT inference decoding"))
        ratio_inference = sft_inference
    else:
        train_loss, source = _train_loss(cfg, run_dir, model, corpus, max_seq_len, progress)

    result: dict[str, Any] = {
        "val_loss": measured.val_loss,
        "inference_loss": measured.inference_loss,
        "train_loss": train_loss,
        "train_loss_source": source,
        "train_inference_ratio": measures.train_inference_ratio(ratio_inference, train_loss),
        "sft_inference_loss": sft_inference,
        "repetition_rate": measured.repetition_rate,
        "distinct_2": measures.distinct_n(greedy, 2),
        "memory_entropy": measured.memory_entropy,
        "memory_selection_distinct": memory.get("selection_distinct"),
        # positions per window of the selection measure, as the model file defines it (older files: none)
        "memory_selection_window": type(model).__init__.__globals__.get("SELECTION_WINDOW") if memory else None,
        "memory_candidate_entropy": measured.memory_candidate_entropy,
        "memory_coverage": memory.get("coverage"),
        "memory": {k: float(v) for k, v in memory.items()},
        "recall": recall,
        "retrieval": retrieval,
        "retrieval_seconds": retrieval_seconds,
        "samples": samples,
        "per_item": per_item,
        **sft,
    }
    guards = rules.check_final(result, cfg.guardrails)
    if result["memory_candidate_entropy"] is not None:  # shown beside the guardrail, never judged
        guards["memory_entropy"]["candidate_entropy"] = result["memory_candidate_entropy"]
    result["guardrails"] = rules.levels_only(guards)
    result.update({
        "stage": cfg.stage, "init": to_dict(cfg.init) if cfg.init else None,
        "checkpoint": str(checkpoint), "module": module, "step": data.get("step"),
        "num_samples": len(pairs), "version": cfg.version if run_dir else None,
        "model_config": model_config, "time": time.time(),
    })
    result = clean(result)
    write_json(out, result)
    if run_dir is not None:
        _finish_run(run_dir, result)
    return result


def _retrieval(lab: Lab, cfg: ExperimentConfig, model, tokenizer, probes, max_probes: int,
               items: dict[str, Any], progress: Optional[EvalProgress] = None
               ) -> tuple[Optional[dict[str, Any]], Optional[float]]:
    """(retrieval diagnostics, seconds they took), or (None, None) for a model without
    memory layers, without probes or without the knowledge file its bank came from."""
    from corpus.knowledge import bank_rows
    from training import measures

    if not probes or not getattr(model.config, "has_memory", False) or not hasattr(model, "inspect_memory"):
        return None, None
    path = lab.resolve(cfg.data.knowledge) if cfg.data.knowledge else None
    if path is None or not path.is_file():
        return None, None
    started = time.perf_counter()
    rows = bank_rows(path, model.config.knowledge_num)
    result = measures.retrieval(model, tokenizer, probes, rows, max_probes, eval_seed(cfg), items,
                                progress.start("retrieval") if progress else None)
    return result, time.perf_counter() - started


def _finish_run(run_dir: Path, result: dict[str, Any]) -> None:
    """state.json flags and the loss picture of the run."""
    from training.plots import plot_run

    rows = read_metrics(run_dir / METRICS_FILE)
    if rows:
        lang = (read_json(run_dir / PLAN_FILE) or {}).get("lang", "en")  # the record's language
        plot_run(rows, run_dir / PLOTS_DIR / "loss.png", run_label(run_dir), lang=lang)  # 1.2.0@43 for a replicate
    update_state(run_dir, evaluated=True, eval_time=result["time"], eval_guardrails=result["guardrails"])


if __name__ == "__main__":
    raise SystemExit(main())
