"""Building what a run needs from its config: accelerator, memory bank, data and probes.

Shared by the trainer and the evaluator so both read data the same way; models are built
by `models.registry`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import DS_CONFIG_FILE
from training.data import split_documents


def make_accelerator(cfg: ExperimentConfig, run_dir: Path):
    from accelerate import Accelerator

    kwargs: dict[str, Any] = {"mixed_precision": cfg.launch.mixed_precision}
    if cfg.launch.cpu:
        kwargs["cpu"] = True
    # `accelerate launch --use_deepspeed --deepspeed_config_file F` (the run script's way)
    # configures DeepSpeed through the environment; only without it do we build the plugin.
    if cfg.launch.deepspeed and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("true", "1"):
        kwargs["deepspeed_plugin"] = deepspeed_plugin(cfg, run_dir)
    return Accelerator(**kwargs)


# --- DeepSpeed (GPU only; UNTESTED here: no GPU and no deepspeed in the CPU environment) ---

def zero2_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """A minimal ZeRO-2 config matching the run's batch, accumulation, clip and precision."""
    mp = cfg.launch.mixed_precision
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.accumulation_steps,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
        "bf16": {"enabled": mp == "bf16"},
        "fp16": {"enabled": mp == "fp16"},
        "steps_per_print": 10**9,
    }


def deepspeed_plugin(cfg: ExperimentConfig, run_dir: Path):
    """`zero2`: write runs/V/ds_config.json and use it; anything else is a JSON path."""
    from accelerate import DeepSpeedPlugin

    from minimind.atomic import write_json

    if cfg.launch.deepspeed == "zero2":
        path = Path(run_dir) / DS_CONFIG_FILE
        if not path.exists():  # the launcher may have written one already: never overwrite it
            write_json(path, zero2_config(cfg))
    else:
        path = Path(cfg.launch.deepspeed)
        if not path.is_file():
            raise MinimindError(f"launch.deepspeed: {path} not found")
    return DeepSpeedPlugin(hf_ds_config=str(path))


# --- memory bank ------------------------------------------------------------------

def load_bank_into(model, lab: Lab, cfg: ExperimentConfig) -> Optional[str]:
    """Initialise the memory bank from data.knowledge (if the model has one); returns a note."""
    if not model.config.has_memory or not cfg.data.knowledge:
        return None
    import torch

    from corpus.knowledge import load_bank

    knowledge_num, knowledge_length = model.config.knowledge_num, model.config.knowledge_length
    bank, importance = load_bank(lab.resolve(cfg.data.knowledge), lab.resolve(cfg.data.tokenizer),
                                 knowledge_num, knowledge_length, lab.cache_dir, progress=False)
    ids = torch.from_numpy(np.ascontiguousarray(bank).astype(np.int64))
    imp = torch.from_numpy(np.ascontiguousarray(importance)) if importance is not None else None
    model.load_memory_bank(ids, imp)
    return f"memory bank: {knowledge_num} x {knowledge_length} from {cfg.data.knowledge}"


# --- data -------------------------------------------------------------------------

@dataclass
class Corpus:
    cache: Any                  # corpus.prepare.TokenCache
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def bad_lines(self) -> int:
        return int(getattr(self.cache, "meta", {}).get("bad_line_count", 0))

    def docs(self, indices) -> list[np.ndarray]:
        return [self.cache.doc(int(i)) for i in indices]


def split_seed(cfg: ExperimentConfig) -> int:
    """The seed of the train/validation split: data.split_seed, or train.seed for configs
    written before split_seed existed (their runs keep the documents they trained on)."""
    return cfg.train.seed if cfg.data.split_seed is None else cfg.data.split_seed


def load_corpus(lab: Lab, cfg: ExperimentConfig) -> Corpus:
    from corpus.prepare import prepare_pretrain

    cache = prepare_pretrain(lab.resolve(cfg.data.pretrain), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                             max_bad_share=cfg.data.max_bad_share, progress=False)
    if cache.num_docs < 2:
        raise MinimindError(f"{cfg.data.pretrain}: needs at least 2 documents, has {cache.num_docs}")
    train_idx, val_idx = split_documents(cache.num_docs, cfg.data.val_fraction, split_seed(cfg))
    return Corpus(cache, train_idx, val_idx)


def load_data(lab: Lab, cfg: ExperimentConfig) -> Corpus:
    """What the run trains on: the pretraining corpus, or for stage sft the conversation cache."""
    if cfg.stage == "sft":
        from training.sft import load_sft_corpus

        return load_sft_corpus(lab, cfg)
    return load_corpus(lab, cfg)


def load_probes(lab: Lab, cfg: ExperimentConfig) -> Optional[dict[str, list[dict]]]:
    if not cfg.data.probes:
        return None
    path = lab.resolve(cfg.data.probes)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise MinimindError(f"{path}: not valid JSON (line {exc.lineno})") from None
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict):
        raise MinimindError(f"{path}: expected {{\"splits\": {{...}}}}")
    return splits
