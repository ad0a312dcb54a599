"""Building what a run needs from its config: accelerator, model, data and memory bank.

Shared by the trainer and the evaluator so both read data and build models the same way.
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
from training.data import split_documents

MEMORY_PRESETS = ("memory", "hybrid", "model_memory", "model")


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
        path = Path(run_dir) / "ds_config.json"
        if not path.exists():  # the launcher may have written one already: never overwrite it
            write_json(path, zero2_config(cfg))
    else:
        path = Path(cfg.launch.deepspeed)
        if not path.is_file():
            raise MinimindError(f"launch.deepspeed: {path} not found")
    return DeepSpeedPlugin(hf_ds_config=str(path))


# --- model ------------------------------------------------------------------------

def load_model_module(lab: Lab, module: str):
    """The snapshot module by name: models.registry when it is there, else importlib here."""
    try:
        from models.registry import load_module
    except ImportError:
        load_module = None
    if load_module is not None:
        return load_module(lab.models_dir, module)
    import importlib.util
    import sys

    path = lab.models_dir / f"{module}.py"
    if not path.is_file():
        raise MinimindError(f"model module {path} not found")
    name = f"_minimind_models_{module}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def build_model(lab: Lab, module: str, model_cfg: dict[str, Any]):
    """MiniMindLM(ModelConfig.from_dict(model_cfg)) from the named module; MinimindError if invalid."""
    try:
        from models.registry import build_model as registry_build
    except ImportError:
        registry_build = None
    try:
        if registry_build is not None:
            return registry_build(lab.models_dir, module, model_cfg)
        mod = load_model_module(lab, module)
        return mod.MiniMindLM(mod.ModelConfig.from_dict(dict(model_cfg)))
    except (ValueError, TypeError) as exc:
        raise MinimindError(f"model config: {exc}") from None


def has_memory(model, model_cfg: dict[str, Any]) -> bool:
    flag = getattr(getattr(model, "config", None), "has_memory", None)
    if isinstance(flag, bool):
        return flag
    return str(model_cfg.get("preset", "")) in MEMORY_PRESETS and hasattr(model, "load_memory_bank")


def load_bank_into(model, lab: Lab, cfg: ExperimentConfig, model_cfg: dict[str, Any]) -> Optional[str]:
    """Initialise the memory bank from data.knowledge (if the model has one); returns a note."""
    if not has_memory(model, model_cfg) or not cfg.data.knowledge:
        return None
    import torch

    from corpus.knowledge import load_bank

    knowledge_num = int(getattr(model.config, "knowledge_num", model_cfg.get("knowledge_num")))
    knowledge_length = int(getattr(model.config, "knowledge_length", model_cfg.get("knowledge_length")))
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


def load_corpus(lab: Lab, cfg: ExperimentConfig) -> Corpus:
    from corpus.prepare import prepare_pretrain

    cache = prepare_pretrain(lab.resolve(cfg.data.pretrain), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                             max_bad_share=cfg.data.max_bad_share, progress=False)
    if cache.num_docs < 2:
        raise MinimindError(f"{cfg.data.pretrain}: needs at least 2 documents, has {cache.num_docs}")
    train_idx, val_idx = split_documents(cache.num_docs, cfg.data.val_fraction, cfg.train.seed)
    return Corpus(cache, train_idx, val_idx)


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
