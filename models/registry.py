"""Model snapshots, loading a model module by name, and checkpoints.

An experiment runs `models/model_X_Y_Z.py`, an exact byte copy of `models/model.py` taken at
launch. Modules are loaded from their file with importlib under a name unique to their
content, so the living model and any number of snapshots coexist in one process and an
edit to `model.py` never changes what an old checkpoint rebuilds. A checkpoint records
the module and the model config that built it (PRODUCT.md section 7).

torch is imported inside the functions that need it: `snapshot` runs on the CLI's fast path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import re
import sys
import zipfile
from pathlib import Path

from minimind.atomic import atomic_open, write_bytes
from minimind.errors import GateRefused, MinimindError

VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
MODULE_RE = re.compile(r"^model(_(0|[1-9][0-9]*)_(0|[1-9][0-9]*)_(0|[1-9][0-9]*))?$")  # never a path
RESERVED_KEYS = ("format", "module", "model_config", "model")
FORMAT = "minimind-checkpoint-1"


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def module_name_for(version: str) -> str:
    """'1.4.8' -> 'model_1_4_8'."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"version must be X.Y.Z with non-negative integers, got {version!r}")
    return "model_" + version.replace(".", "_")


def snapshot(models_dir, version: str) -> tuple[Path, str]:
    """Copy models_dir/model.py byte for byte to models_dir/model_X_Y_Z.py; return (path, sha256).

    An existing snapshot with the same bytes is kept (idempotent); one with other bytes is
    refused: snapshots are never edited after launch.
    """
    models_dir = Path(models_dir)
    source = models_dir / "model.py"
    if not source.is_file():
        raise MinimindError(f"no model file at {source}")
    data = source.read_bytes()
    target = models_dir / f"{module_name_for(version)}.py"
    if target.exists():
        if target.read_bytes() != data:
            raise GateRefused(f"snapshot {target} already exists and differs from {source}; snapshots are never rewritten")
    else:
        write_bytes(target, data)
    return target, hashlib.sha256(data).hexdigest()


def load_module(models_dir, name: str):
    """Import models_dir/<name>.py ('model' or 'model_X_Y_Z') under a name unique to its content."""
    if not isinstance(name, str) or not MODULE_RE.match(name):
        raise MinimindError(f"model module must be 'model' or 'model_X_Y_Z', got {name!r}")
    path = Path(models_dir) / f"{name}.py"
    if not path.is_file():
        raise MinimindError(f"model module {name!r} not found: {path}")
    # Same bytes -> same module object (its classes stay identical); edited bytes -> a new one.
    unique = f"minimind_models.{name}_{sha256_file(path)[:16]}"
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]
        raise
    return module


def build_model(models_dir, module_name: str, model_cfg: dict):
    """MiniMindLM of the named module, built from a model config dict (unknown keys refused)."""
    module = load_module(models_dir, module_name)
    try:
        config = module.ModelConfig.from_dict(dict(model_cfg))
    except ValueError as error:
        raise MinimindError(f"model config: {error}") from None
    model = module.MiniMindLM(config)
    model.minimind_module = module_name  # what save_checkpoint records
    return model


def save_checkpoint(path, model, extra: dict | None = None, module_name: str | None = None) -> None:
    """Write {format, module, model_config, model (state dict, memory bank included), **extra} atomically.

    module_name defaults to the one the model was built from (build_model/load_checkpoint).
    The order (path, model, module_name, extra) is accepted too.
    """
    import torch

    if isinstance(extra, str):  # called as (path, model, module_name, extra)
        extra, module_name = module_name, extra
    module_name = module_name or getattr(model, "minimind_module", None)
    if module_name is None or not MODULE_RE.match(module_name):
        raise MinimindError(f"save_checkpoint needs the model's module name ('model' or 'model_X_Y_Z'), got {module_name!r}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"checkpoint extra keys clash with reserved keys: {', '.join(clash)}")
    checkpoint = {"format": FORMAT, "module": module_name, "model_config": model.config.to_dict(),
                  "model": model.state_dict(), **extra}
    with atomic_open(path, "wb", encoding=None) as handle:
        torch.save(checkpoint, handle)


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text.split(". ")[0] if text else type(error).__name__)[:200]


def _strip_wrapper_prefixes(state: dict) -> dict:
    """Keys saved from a DDP- or torch.compile-wrapped model carry 'module.' / '_orig_mod.' prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_checkpoint(path, models_dir, map_location="cpu", module_name: str | None = None,
                    config: dict | None = None):
    """(model, checkpoint dict) from a minimind checkpoint, or from a raw MiniMind2-style state
    dict (e.g. pretrain_512.pth) when module_name and config are given. Loads strictly.

    Files are unpickled with weights_only=True: tensors and plain data only, no code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MinimindError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:  # e.g. a numpy array: store RNG states as tensors or lists instead
            raise MinimindError(f"checkpoint {path} holds a {unsafe.group(1)} object; checkpoints may hold only "
                                "tensors and plain data (dict, list, str, numbers)") from None
        raise MinimindError(f"checkpoint {path} is truncated or corrupted ({_first_sentence(error)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError) as error:
        raise MinimindError(f"checkpoint {path} is truncated or corrupted ({_first_sentence(error)})") from None
    if not isinstance(ckpt, dict):
        raise MinimindError(f"checkpoint {path} is not a dict (got {type(ckpt).__name__})")

    if "module" in ckpt and "model_config" in ckpt and "model" in ckpt:
        name, cfg, state = ckpt["module"], ckpt["model_config"], ckpt["model"]
        if module_name is not None:
            name = module_name
        if config is not None:
            cfg = config
    elif module_name is not None and config is not None:
        name, cfg, state = module_name, config, ckpt
        ckpt = {"module": name, "model_config": dict(cfg), "model": state}
    else:
        raise MinimindError(f"checkpoint {path} records no module/model_config; "
                            "give module_name and config to load a raw state dict")

    model = build_model(models_dir, name, cfg)
    state = _strip_wrapper_prefixes(state)
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    except RuntimeError as error:  # shape mismatches
        first = str(error).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise MinimindError(f"checkpoint {path} does not fit {name} with its config: {detail[:300]}") from None
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        parts = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(unexpected)}"] if unexpected else [])
        raise MinimindError(f"checkpoint {path} does not fit {name}: {'; '.join(parts)}")
    if isinstance(map_location, (str, torch.device)):  # a callable or dict map_location leaves the model on CPU
        model.to(map_location)
    return model, ckpt
