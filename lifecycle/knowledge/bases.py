"""What a new experiment starts from: its default base, the base's config with the lab's
policy re-read, and the human's --set items checked against the lab's model.

`new` and a code change (`new --patch`, lifecycle/code/codechange.py) both build on these,
so neither imports the other for them.
"""

from __future__ import annotations

from typing import Any, Optional

from minimind.config import AGENT_SECTIONS, HUMAN_SECTIONS, LAB_POLICY_SECTIONS, apply_sets, load_config, parse_set, resolve_key
from minimind.errors import UsageError
from minimind.lab import Lab
from minimind.rundir import CONFIG_FILE, current
from minimind.schema import to_dict
from minimind.settings import SPLIT_SEED, LabSettings
from minimind.versions import default_base
from models.registry import model_schema, validate_model


def base_config(lab: Lab, settings: LabSettings, base: Optional[str], model_config_cls) -> dict[str, Any]:
    """What the new experiment starts from: the base's config, with the lab's policy sections."""
    lab_defaults = {
        "model": validate_model(model_config_cls, dict(settings.model)),
        "train": settings.train, "data": settings.data, "eval": settings.eval,
        "guardrails": settings.guardrails, "launch": settings.launch, "swanlab": settings.swanlab,
    }
    lab_defaults = {k: to_dict(v) for k, v in lab_defaults.items()}
    if base is None:
        if lab_defaults["data"].get("split_seed") is None:
            lab_defaults["data"]["split_seed"] = SPLIT_SEED
        return lab_defaults
    inherited = load_config(lab.run_dir(base) / CONFIG_FILE).to_dict()
    config = {k: inherited[k] for k in (*AGENT_SECTIONS, *HUMAN_SECTIONS)}  # the policy is re-read below
    if config["data"].get("split_seed") is None:
        # A base written before split_seed split its documents by train.seed: pin that
        # seed, so this run is evaluated on the base's documents whatever its own seed.
        config["data"]["split_seed"] = inherited["train"]["seed"]
    config.update({k: lab_defaults[k] for k in LAB_POLICY_SECTIONS})
    return config


def parse_sets(items: list[str], model_fields: dict[str, dict]) -> list[tuple[str, Any]]:
    return [parse_set(item, model_fields) for item in items]


def check_sets(lab: Lab, items: list[str]) -> list[tuple[str, Any]]:
    """--set items parsed, their keys resolved and their values type-checked against the lab's
    own settings: for a caller (the demo) that should refuse a typo before it trains anything."""
    model_cls, model_fields = model_schema(lab)
    sets = parse_sets(items, model_fields)
    for key, _ in sets:
        resolve_key(key, model_fields)
    apply_sets(base_config(lab, lab.settings(), None, model_cls), sets, model_fields)
    return sets


def finished_base(lab: Lab, version: str) -> Optional[str]:
    """The default base of a pretraining experiment: the highest *finished* pretraining experiment
    below `version`. A draft that never ran, or a run that failed, has nothing to build on; an
    SFT run is another stage, whose inference loss SFT itself raised (an SFT experiment names
    its --base)."""
    def pretrained(v: str) -> bool:
        derived, state = current(lab.run_dir(v))
        return derived == "finished" and (state.stage or "pretrain") == "pretrain"

    return default_base(version, [v for v in lab.versions() if pretrained(v)])


def check_existing(lab: Lab, version: str) -> None:
    if lab.run_dir(version).exists() or lab.record_path(version).exists():
        raise UsageError(f"experiment {version} already exists")
