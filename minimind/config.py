"""`runs/V/config.yaml`: the fully resolved experiment config, `--set` parsing, diffs.

The model section is a plain dict here: its schema lives in `models/model.py`
(`ModelConfig`), which imports torch; callers that need it pass the model's field
schema in, so this module stays light enough for `status`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from minimind.errors import MinimindError, UsageError
from minimind.guardrails import NAMES as GUARDRAIL_NAMES
from minimind.schema import SchemaError, build, coerce, check_range, describe, field, to_dict
from minimind.settings import (DataConfig, EvalConfig, GuardrailsConfig, LaunchConfig,
                               SwanlabConfig, TrainConfig)

from minimind.rundir import CONFIG_FILE

# Sections a user may address with --set, in the order bare names are looked up.
SECTIONS: dict[str, type] = {
    "train": TrainConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "launch": LaunchConfig,
    "swanlab": SwanlabConfig,
}


STAGES = ("pretrain", "sft")

# Who changes each section of an experiment config: the one list that `new`, the agent's tools
# and prompts and the analysis read. The agent proposes model.* and train.*. data paths are the
# human's (--set) and inherited from the base; eval, guardrails, launch and swanlab are the
# lab's policy (minimind.yaml), re-read for every new experiment. swanlab is fixed like the rest
# of the policy, and shown to the agent with it: where results go (a cloud upload) is the user's
# call, not a research variable, and one list of fixed sections keeps "everything but model.*
# and train.* is fixed" true without an exception (the agent's tools refused swanlab.* while
# its prompts left it out of the fixed settings). The agent's tools allow AGENT_SECTIONS only,
# so a section added later is closed to the agent until someone opens it here. `init` is
# written by `new` from --base (stage sft), by no one else.
AGENT_SECTIONS = ("model", "train")
HUMAN_SECTIONS = ("data",)
LAB_POLICY_SECTIONS = ("eval", "guardrails", "launch", "swanlab")
FIXED_SECTIONS = (*HUMAN_SECTIONS, *LAB_POLICY_SECTIONS)
DERIVED_SECTIONS = ("init",)


@dataclass(kw_only=True)
class InitConfig:
    """The checkpoint an SFT experiment starts from (weights, memory bank, freeze mask)."""

    version: str = field(help="the pretrain experiment")
    checkpoint: str = field(help="its checkpoint, relative to the lab")
    sha256: str = field(help="sha256 of that file when the experiment was created")
    step: Optional[int] = field(None, help="the optimizer step the checkpoint was saved at")


@dataclass(kw_only=True)
class ExperimentConfig:
    version: str = field(help="experiment version X.Y.Z")
    base: Optional[str] = field(None, help="base experiment version")
    model_module: str = field(help="snapshot module that builds the model, e.g. model_1_4_8")
    # Configs written before SFT existed have no `stage`: they are pretraining runs.
    stage: Literal["pretrain", "sft"] = field("pretrain", help="pretrain (token cache of data.pretrain) or sft "
                                              "(conversations of data.sft, starting from `init`)", choices=list(STAGES))
    init: Optional[InitConfig] = field(None, help="stage sft: the pretrain checkpoint it starts from")
    model: dict[str, Any] = field(help="ModelConfig fields, fully resolved")
    train: TrainConfig = field(default_factory=TrainConfig, help="training")
    data: DataConfig = field(default_factory=DataConfig, help="data")
    eval: EvalConfig = field(default_factory=EvalConfig, help="evaluation")
    guardrails: GuardrailsConfig = field(default_factory=GuardrailsConfig, help="guardrails")
    launch: LaunchConfig = field(default_factory=LaunchConfig, help="launch")
    swanlab: SwanlabConfig = field(default_factory=SwanlabConfig, help="SwanLab")

    def __post_init__(self) -> None:
        if self.stage == "sft" and self.init is None:
            raise ValueError("stage sft needs init (the pretrain checkpoint it starts from)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def from_dict(data: dict[str, Any], where: str = CONFIG_FILE) -> ExperimentConfig:
    try:
        return build(ExperimentConfig, data)
    except SchemaError as exc:
        raise MinimindError(f"{where}: {exc}") from None


def load_config(path: Path) -> ExperimentConfig:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinimindError(f"{path} not found") from None
    except yaml.YAMLError:
        raise MinimindError(f"{path} is not valid YAML") from None
    return from_dict(data or {}, where=str(path))


def dump_config(cfg: ExperimentConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def config_hash(cfg: ExperimentConfig) -> str:
    """Short content hash of what determines the run (version and base excluded)."""
    data = cfg.to_dict()
    data.pop("version"), data.pop("base")
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --- --set KEY=VALUE ---------------------------------------------------------------

def parse_assignment(item: str) -> tuple[str, str]:
    """'train.batch_size=8' -> ('train.batch_size', '8'); UsageError if malformed."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
    return key, value.strip()


def parse_value(text: str) -> Any:
    """YAML scalar parsing: '8' -> 8, '1e-4' -> 0.0001, 'true' -> True, 'null' -> None."""
    import yaml

    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # PyYAML reads '1e-4' as a string (YAML 1.1 wants a dot)
        except ValueError:
            return value
    return value


def resolve_key(key: str, model_fields: dict[str, dict]) -> tuple[str, ...]:
    """A user's key -> its path in the config, e.g. 'dim' -> ('model', 'dim').

    `section.name` always works; a bare name works where exactly one section has it.
    """
    parts = tuple(key.split("."))
    if parts[0] == "model" and len(parts) == 2:
        if parts[1] not in model_fields:
            raise UsageError(f"unknown setting '{key}'")
        return parts
    if parts[0] in SECTIONS and len(parts) == 2:
        if parts[1] not in describe(SECTIONS[parts[0]]):
            raise UsageError(f"unknown setting '{key}'")
        return parts
    if parts[0] == "guardrails":
        if len(parts) == 2 and parts[1] == "smoothing_window":
            return parts
        if len(parts) == 3 and parts[1] in GUARDRAIL_NAMES and parts[2] in ("safe", "danger", "action"):
            return parts
        raise UsageError(f"unknown setting '{key}' (use guardrails.<name>.safe|danger|action)")
    if len(parts) != 1:
        raise UsageError(f"unknown setting '{key}'")
    owners = [("model",)] if key in model_fields else []
    owners += [(name,) for name, cls in SECTIONS.items() if key in describe(cls)]
    if not owners:
        raise UsageError(f"unknown setting '{key}'")
    if len(owners) > 1:
        choices = " or ".join(f"{o[0]}.{key}" for o in owners)
        raise UsageError(f"setting '{key}' is ambiguous: use {choices}")
    return owners[0] + (key,)


def _takes_words(tp: Any) -> bool:
    """A type that takes text and no number or boolean: a plain string or a choice of strings."""
    import types
    import typing

    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    words = any(o is str or (typing.get_origin(o) is Literal and all(isinstance(a, str) for a in typing.get_args(o)))
                for o in options)
    return words and not any(o in (bool, int, float) for o in options)


def parse_set(item: str, model_fields: dict[str, dict]) -> tuple[str, Any]:
    """One --set item -> (key as typed, value). YAML reads a bare `no`, `off`, `yes` or `on` as a
    boolean; a setting that only takes words (mixed_precision, a path) gets the word as typed."""
    key, text = parse_assignment(item)
    value = parse_value(text)
    if not isinstance(value, (bool, int, float)):
        return key, value  # text, null, or a list or mapping typed as such
    path = resolve_key(key, model_fields)
    if path[0] == "model":
        words = model_fields[path[1]].get("type") == "str"
    elif path[0] in SECTIONS:
        from typing import get_type_hints

        words = _takes_words(get_type_hints(SECTIONS[path[0]])[path[1]])
    else:
        words = path[-1] == "action"  # guardrails.<name>.action: stop | flag | none
    return key, (text if words else value)


def apply_sets(config: dict[str, Any], assignments: list[tuple[str, Any]],
               model_fields: dict[str, dict]) -> dict[str, Any]:
    """Return a copy of `config` (plain dict) with each (key, value) applied at its path.

    Values are type- and range-checked here for the non-model sections; the model section
    is checked by the caller with the model's own ModelConfig.
    """
    import copy

    out = copy.deepcopy(config)
    for key, value in assignments:
        path = resolve_key(key, model_fields)
        key = ".".join(path)  # messages name the full key, whatever the user typed
        if path[0] == "model":
            spec = model_fields[path[1]]
            check_model_value(path[1], value, spec)
        elif path[0] in SECTIONS:
            _check_section_value(SECTIONS[path[0]], path[1], value, key)
        elif path[0] == "guardrails":
            if path[-1] == "action" and value not in ("stop", "flag", "none"):
                raise UsageError(f"{key}: must be one of stop, flag, none; got {value!r}")
            if path[-1] != "action" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UsageError(f"{key}: expected a number, got {value!r}")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _check_section_value(cls: type, name: str, value: Any, key: str) -> None:
    import dataclasses
    from typing import get_type_hints

    fld = {f.name: f for f in dataclasses.fields(cls)}[name]
    try:
        value = coerce(value, get_type_hints(cls)[name], key)
        check_range(value, fld.metadata, key)
    except SchemaError as exc:
        raise UsageError(str(exc)) from None


def check_model_value(name: str, value: Any, spec: dict) -> None:
    """Type and range of one model field from ModelConfig's schema (torch-free)."""
    tp = spec.get("type", "")
    if value is None and spec.get("nullable"):
        return
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(tp.split(" ")[0] if tp else "", True)
    if not ok:
        raise UsageError(f"model.{name}: expected {tp}, got {value!r}")
    try:
        check_range(value, spec, f"model.{name}")
    except SchemaError as exc:
        raise UsageError(str(exc)) from None


# --- diffs (pure) -------------------------------------------------------------------

def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ("version", "base", "model_module")) -> list[tuple[str, Any, Any]]:
    """[(dotted key, a value, b value)] for keys whose values differ, sorted by key."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [(k, fa.get(k), fb.get(k)) for k in keys if k not in ignore and fa.get(k) != fb.get(k)]


def agent_schema(model_fields: dict[str, dict]) -> dict[str, dict]:
    """Dotted keys the agent may change, with type, meaning and range: the model's own fields
    (from its module) and the training settings."""
    schema = {f"model.{k}": v for k, v in model_fields.items()}
    schema.update({f"train.{k}": v for k, v in describe(TrainConfig).items()})
    return schema
