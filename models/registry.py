"""Model snapshots, loading a model module by name, presets, and the checkpoint format.

An experiment runs `models/model_X_Y_Z.py`, an exact byte copy of `models/model.py` taken at
launch. Modules are loaded from their file with importlib under a name unique to their
content, so the living model and any number of snapshots coexist in one process and an
edit to `model.py` never changes what an old checkpoint rebuilds.

The checkpoint format lives here and nowhere else: one `torch.save` dict of tensors and
plain data holding at least
  format        FORMAT
  module        the module that built the model ('model' or 'model_X_Y_Z')
  model_config  its ModelConfig as a dict
  model         the state dict (buffers included: memory bank, freeze mask, usage counts)
  time          when it was written
plus whatever the writer adds (the trainer's resume state: training/checkpoint.py).
`read_checkpoint` is the one reader; `model_from_checkpoint` builds the model from what
it read, so no file is read twice. A raw MiniMind-style state dict (eval_model.py's
pretrain_512.pth) is read by the same function and built when the caller names the
module and the config.

torch is imported inside the functions that need it: `snapshot` runs on the CLI's fast path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from minimind.atomic import atomic_open, write_bytes
from minimind.errors import GateRefused, MinimindError, UsageError
from minimind.versions import is_module_name, module_name

FORMAT = "minimind-checkpoint-1"  # unchanged since the first release: old checkpoints load as they are
LIVING = "model"                  # the living file models/model.py; every other module is a snapshot
REQUIRED_KEYS = ("module", "model_config", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile prefix every key of what they save


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- snapshots and modules --------------------------------------------------------------

def snapshot(models_dir, version: str) -> tuple[Path, str]:
    """Copy models_dir/model.py byte for byte to models_dir/model_X_Y_Z.py; return (path, sha256).

    An existing snapshot with the same bytes is kept (idempotent); one with other bytes is
    refused: snapshots are never edited after launch.
    """
    models_dir = Path(models_dir)
    source = models_dir / f"{LIVING}.py"
    if not source.is_file():
        raise MinimindError(f"no model file at {source}")
    data = source.read_bytes()
    target = models_dir / f"{module_name(version)}.py"
    if target.exists():
        if target.read_bytes() != data:
            raise GateRefused(f"snapshot {target} already exists and differs from {source}; snapshots are never rewritten")
    else:
        write_bytes(target, data)
    return target, hashlib.sha256(data).hexdigest()


def load_module(models_dir, name: str):
    """Import models_dir/<name>.py ('model' or 'model_X_Y_Z') under a name unique to its content."""
    if not is_module_name(name):
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


def block_specs(module) -> dict[str, Any]:
    """Every preset and alias a loaded model module accepts -> its BlockSpec (feed_forward, memory).

    The module's PRESETS and PRESET_ALIASES are the only list: a preset added to model.py is
    usable everywhere at once (the estimate, the memory plan, the agent's prose and proposals).
    """
    return {**module.PRESETS, **{alias: module.PRESETS[target] for alias, target in module.PRESET_ALIASES.items()}}


def preset_names(models_dir, name: str = LIVING) -> tuple[str, ...]:
    """Every preset and alias the named module accepts, presets first."""
    return tuple(block_specs(load_module(models_dir, name)))


def memory_presets(models_dir, name: str = LIVING) -> tuple[str, ...]:
    """The presets and aliases of the named module whose blocks hold a memory bank."""
    return tuple(preset for preset, spec in block_specs(load_module(models_dir, name)).items() if spec.memory)


def preset_spec(models_dir, name: str, preset: str):
    """The BlockSpec of one preset (or alias) of the named module; MinimindError if it has none."""
    specs = block_specs(load_module(models_dir, name))
    if preset not in specs:
        raise MinimindError(f"model module {name!r} has no preset {preset!r} (it has {', '.join(specs)})")
    return specs[preset]


def config_spec(config):
    """The BlockSpec of a built ModelConfig, from the module that defined its class (the living
    model or a snapshot loaded by load_module)."""
    return block_specs(sys.modules[type(config).__module__])[config.preset]


def model_config(models_dir, module: str, model_cfg: dict):
    """The named module's ModelConfig from a dict, defaults filled in (unknown keys refused)."""
    code = load_module(models_dir, module)
    try:
        return code.ModelConfig.from_dict(dict(model_cfg))
    except (ValueError, TypeError) as error:
        raise MinimindError(f"model config: {error}") from None


def build_model(models_dir, module: str, model_cfg: dict):
    """MiniMindLM of the named module, built from a model config dict (unknown keys refused)."""
    return load_module(models_dir, module).MiniMindLM(model_config(models_dir, module, model_cfg))


# --- checkpoints ------------------------------------------------------------------------

def save_checkpoint(path, payload: dict[str, Any]) -> None:
    """Write payload (tensors and plain data, with module, model_config and model) atomically.

    The format tag and the time are added here. A crash mid-write leaves the previous file.
    """
    import torch

    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"a checkpoint needs {', '.join(missing)}")
    if not is_module_name(payload["module"]):
        raise ValueError(f"checkpoint module must be 'model' or 'model_X_Y_Z', got {payload['module']!r}")
    with atomic_open(path, "wb", encoding=None) as handle:
        torch.save({**payload, "format": FORMAT, "time": time.time()}, handle)


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text.split(". ")[0] if text else type(error).__name__)[:200]


def read_checkpoint(path) -> dict[str, Any]:
    """The dict inside a checkpoint (ours or a raw state dict); one-line MinimindError if it is bad.

    Unpickled with weights_only=True: tensors and plain data only, a file can never run code.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MinimindError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise MinimindError(f"checkpoint {path} cannot be read ({_first_line(error)})") from None
    # torch.load promises no exception type for damaged input: truncations and flipped bytes
    # raise RuntimeError, UnpicklingError, UnicodeDecodeError, ValueError, EOFError or
    # OSError (a seek past the end), and other versions others. Whatever it raises, the
    # file is unusable; say which file.
    except Exception as error:  # noqa: BLE001
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:  # e.g. a numpy array: RNG states must be stored as tensors or lists
            raise MinimindError(f"checkpoint {path} holds a {unsafe.group(1)} object; checkpoints may hold only "
                                "tensors and plain data (dict, list, str, numbers)") from None
        raise MinimindError(f"checkpoint {path} is truncated or corrupted "
                            f"({type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(data, dict):
        raise MinimindError(f"checkpoint {path} does not hold a dict (got {type(data).__name__})")
    written = data.get("format")
    if isinstance(written, str) and written.startswith("minimind-checkpoint-") and written != FORMAT:
        raise MinimindError(f"checkpoint {path} has format {written}; this minimind reads {FORMAT}")
    return data


def weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The state dict inside a checkpoint, whichever layout wrote it (ours, common trainers', raw)."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint  # a raw MiniMind-style state dict


def load_weights(model, state: dict[str, Any], path, module: str) -> None:
    """Strict load_state_dict with wrapper prefixes stripped; missing/unexpected keys named."""
    stripped = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    try:
        result = model.load_state_dict(stripped, strict=False)
    except RuntimeError as error:  # shape mismatches raise even when strict=False
        lines = str(error).strip().splitlines()
        detail = next((line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else "")
        raise MinimindError(f"checkpoint {path} does not fit {module} with its config: {detail[:300]}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        parts = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(unexpected)}"] if unexpected else [])
        raise MinimindError(f"checkpoint {path} does not fit {module}: {'; '.join(parts)}")


def model_from_checkpoint(checkpoint: dict[str, Any], models_dir, path, module_name: Optional[str] = None,
                          config: Optional[dict] = None):
    """The model (on CPU) a read checkpoint describes; module_name/config override what it records.

    A raw state dict records neither, so both must be given. `path` names the file in errors.
    """
    name = module_name if module_name is not None else checkpoint.get("module")
    cfg = config if config is not None else checkpoint.get("model_config")
    if not isinstance(name, str) or not isinstance(cfg, dict):
        raise MinimindError(f"checkpoint {path} records no module/model_config; "
                            "give module_name and config to load a raw state dict")
    model = build_model(models_dir, name, cfg)
    load_weights(model, weights(checkpoint), path, name)
    return model


def load_checkpoint(path, models_dir) -> tuple[Any, dict[str, Any]]:
    """(model, checkpoint dict) of a minimind checkpoint: read_checkpoint then model_from_checkpoint."""
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, models_dir, path), checkpoint


def model_schema(lab) -> tuple[Any, dict[str, dict]]:
    """The living model's ModelConfig class and its field schema (what `--set model.*` may name)."""
    try:
        module = load_module(lab.models_dir, LIVING)
    except FileNotFoundError:
        raise MinimindError(f"{lab.models_dir / 'model.py'} is missing") from None
    return module.ModelConfig, module.ModelConfig.fields_schema()


def validate_model(model_config_cls, model: dict) -> dict:
    """A model section as the model's own config class resolves it; its complaint as a usage error."""
    try:
        return model_config_cls.from_dict(model).to_dict()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"model: {exc}") from None
