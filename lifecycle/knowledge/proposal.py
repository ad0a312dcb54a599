"""Next-experiment proposals: the analysis's structured next step, `runs/V/next.json`.

A proposal is {base, goal, hypothesis, sets: ["key=value", ...], expect, why, proposed_by,
estimate[, fallback_reason]}. Under the claude backend the model proposes it in the
analysis (agent/tools.py validates its keys, values, expect and base); it is used when
the config it yields validates as `new` would validate it. Otherwise, and under the
offline backend, it is derived from the numbers by rule, the first that fits the run's
preset, the causes its data supports (minimind/causes.py) and its verdict: a forced failed
preflight check is repeated with the check passing; memory entropy in danger (memory
presets) gets more candidates; a collapsing train loss a halved learning rate; a refuted
change, or one that moved a guardrail into danger, is tried at half the step; an
under-trained run, a supported and an inconclusive one train longer; a refuted run with
no numeric change to step back from is repeated with another seed. `fallback_reason`
says why the model's was not used. `seeds` (lifecycle/knowledge/proposal.py `proposed_seeds`): the
replicates of this experiment when it had several, 3 after an inconclusive single run in a lab
that measured its noise floor; absent for one.

A numeric value respects its setting as `new` validates it: the half step is the valid
value nearest the midpoint, strictly between the two (a perfect square for
knowledge_num, a width its heads divide), ranges are clamped, and floats carry no binary
noise (0.3, not 0.30000000000000004). A proposal that still does not validate is
dropped by the analysis with its reason in the record (lifecycle/running/analyse.py); it never
fails the analysis. Its estimated cost is the compute estimate of the config it would
produce. Its sentences follow the record's language (en/zh). `minimind new V2
--from-proposal V` starts from it; the human's flags win.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from minimind.atomic import write_json
from minimind.config import AGENT_SECTIONS
from minimind.errors import MinimindError, UsageError
from minimind.phrases import phrase
from minimind.rundir import NEXT_FILE, read_json


def _t(lang: str, key: str, **values: Any) -> str:
    """The rules' sentences: the phrasebook's `proposal` group (a zh record is Chinese throughout)."""
    return phrase(f"proposal.{key}", lang, **values)


_SIG_DIGITS = 6    # a float proposal never carries more significant digits than this


def tidy(value: Any) -> Any:
    """A float as a person writes it: 0.30000000000000004 -> 0.3, 0.00025 stays."""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{_SIG_DIGITS}g}")
    return value


def _between(a: float, b: float, kind: type) -> list[Any]:
    """Candidate values strictly between a and b, nearest the midpoint first: the midpoint
    rounded to as few digits as keep it near the middle (floats), and for integers also the
    perfect squares and multiples of powers of two near it (the model's own constraints:
    knowledge_num is a square, widths divide by head counts)."""
    lo, hi = min(a, b), max(a, b)
    mid = (a + b) / 2
    if kind is float:
        step = hi - lo
        rounded = [float(f"{mid:.{d}g}") for d in range(1, _SIG_DIGITS + 1)]
        near = [r for r in rounded if lo < r < hi and abs(r - mid) <= step / 10]
        return [near[0]] if near else ([tidy(mid)] if lo < tidy(mid) < hi else [])
    found: set[int] = set()
    centre = round(mid)
    found.add(centre)
    root = math.isqrt(max(int(mid), 0))
    found.update(s * s for s in range(max(root - 2, 0), root + 3))
    for power in range(1, 31):
        unit = 2 ** power
        if unit > hi:
            break
        found.update((centre // unit * unit, (centre // unit + 1) * unit))
    return sorted((c for c in found if lo < c < hi), key=lambda c: (abs(c - mid), c))


def _kind(spec: dict) -> Optional[type]:
    return {"int": int, "float": float}.get(str(spec.get("type", "")).strip())


class Validator:
    """`new`'s validation of a config, loaded once: types, ranges and the model's own checks."""

    def __init__(self, lab):
        from minimind.config import agent_schema
        from models.registry import model_schema
        from models.registry import memory_presets

        self.model_cls, self.fields = model_schema(lab)
        self.schema = agent_schema(self.fields)
        # what the next experiment runs is the living model: its presets decide the rules
        self.memory_presets = memory_presets(lab.models_dir)

    def config(self, cfg: dict, sets: list[tuple[str, Any]]) -> dict:
        from models.registry import validate_model
        from minimind.config import apply_sets

        proposed = apply_sets(cfg, sets, self.fields)  # types and ranges against the schema
        proposed["model"] = validate_model(self.model_cls, proposed["model"])
        return proposed

    def valid(self, cfg: dict, sets: list[tuple[str, Any]]) -> bool:
        try:
            self.config(cfg, sets)
        except (UsageError, MinimindError):
            return False
        return True

    def halfway(self, cfg: dict, key: str, a: Any, b: Any, others: list[tuple[str, Any]]) -> Optional[Any]:
        """The valid value nearest the middle of a (base) and b (this run), strictly between
        them, with `others` applied; None when the setting is not numeric or none is valid."""
        kind = _kind(self.schema.get(key, {}))
        if kind is None or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (a, b)) or a == b:
            return None
        for value in _between(a, b, kind)[:64]:
            if self.valid(cfg, [*others, (key, value)]):
                return value
        return None

    def within(self, key: str, value: Any) -> Any:
        """`value` clamped into the setting's range (a doubled max_steps stays <= its max)."""
        spec = self.schema.get(key, {})
        lo, hi = spec.get("min"), spec.get("max")
        if hi is not None and value > hi:
            value = hi
        if lo is not None and value < lo:
            value = lo
        return tidy(value)


def rule_proposal(validator: Validator, version: str, cfg: dict, verdict: str, dangers: list[str], changes: list,
                  causes: list[dict], lang: str = "en") -> tuple[list[tuple[str, Any]], str, str, str]:
    """(sets, goal, hypothesis, why) for the next experiment: the first rule that fits the
    run's preset, its causes (minimind/causes.py) and its verdict."""
    from minimind import causes as rules

    m, t = cfg["model"], cfg["train"]

    def said(name: str, **values: Any) -> tuple[str, str, str]:
        return tuple(_t(lang, f"{name}_{part}", version=version, **values) for part in ("goal", "hyp", "why"))

    forced = rules.first(causes, rules.FORCED_CHECK)
    if forced:
        return ([], *said("forced", checks=", ".join(forced["names"])))
    if "memory_entropy" in dangers and m.get("preset") in validator.memory_presets:
        side = math.isqrt(m["knowledge_num"])
        more = min(side, m["num_candidates"] * 2)
        weight = validator.within("model.diversity_loss_weight", max(0.1, 2 * m.get("diversity_loss_weight", 0.0)))
        sets = [("model.num_candidates", more)] if more > m["num_candidates"] else [("model.diversity_loss_weight", weight)]
        return (sets, *said("entropy"))
    if "train_loss" in dangers:
        return ([("train.learning_rate", validator.within("train.learning_rate", t["learning_rate"] / 2))], *said("loss"))
    moved = rules.first(causes, rules.GUARDRAIL_MOVED)
    if verdict == "refuted" or moved:
        halves: list[tuple[str, Any]] = []
        for key, a, b in changes:
            if key.split(".")[0] in AGENT_SECTIONS:
                value = validator.halfway(cfg, key, a, b, halves)
                if value is not None:
                    halves.append((key, value))
        if halves:
            return (halves, *said("half", keys=", ".join(k for k, _ in halves)))
    longer = ([("train.max_steps", validator.within("train.max_steps", t["max_steps"] * 2))] if t["max_steps"]
              else [("train.epochs", validator.within("train.epochs", t["epochs"] + 1))])
    if rules.first(causes, rules.UNDER_TRAINED):
        return (longer, *said("under"))
    if verdict == "refuted":
        return ([("train.seed", (t["seed"] + 1) % 2**31)], *said("seed"))
    if verdict == "supported":
        return (longer, *said("longer"))
    if not cfg.get("base"):
        return (longer, *said("first"))  # no base: there is no difference to separate from noise
    return (longer, *said("noise"))


def build(lab, version: str, cfg: dict, verdict: str, dangers: list[str], changes: list, lang: str = "en",
          suggested: Optional[dict[str, Any]] = None, backend: Optional[str] = None,
          causes: Optional[list[dict]] = None) -> dict[str, Any]:
    """The validated proposal for the experiment after `version`.

    `suggested`: the agent's next experiment (agent/tools.py checked its keys, values, expect and
    base); it is used when the config it yields validates, else the rules propose and the
    proposal says why (`fallback_reason`). Raises MinimindError when the rules' own proposal
    does not validate: the caller drops it (an optional product never fails the analysis)."""
    from lifecycle.knowledge import estimate
    from models.registry import LIVING

    validator = Validator(lab)
    fallback = None
    base_cfg = cfg
    if suggested:
        sets = [(k, tidy(v)) for k, v in (suggested.get("sets") or {}).items()]
        base = suggested.get("base") or version
        try:
            if base != version:
                base_cfg = _base_config(lab, base)
            proposed = validator.config(base_cfg, sets)
        except (UsageError, MinimindError) as exc:
            fallback = _t(lang, "fallback", backend=backend or "agent", reason=str(exc).splitlines()[0])
            suggested, base_cfg = None, cfg
        else:
            goal, hypothesis, why = suggested["goal"], suggested["hypothesis"], suggested["why"]
            expect = suggested.get("expect") or "inference_loss < base"
            by = backend or "agent"
    if not suggested:
        base = version
        sets, goal, hypothesis, why = rule_proposal(validator, version, cfg, verdict, dangers, changes, causes or [], lang)
        expect, by = "inference_loss < base", "rules"
        try:
            proposed = validator.config(cfg, sets)
        except UsageError as exc:
            raise MinimindError(f"the rules' next experiment does not validate ({exc})") from None
    # the proposed experiment will snapshot the living model, whatever module its base ran
    est = estimate.estimate(lab, {**proposed, "model_module": LIVING})
    base_est = estimate.estimate(lab, base_cfg)
    ratio = est["train_flops"] / base_est["train_flops"] if est["train_flops"] and base_est["train_flops"] else None
    out = {"base": base, "goal": goal, "hypothesis": hypothesis, "expect": expect,
           "sets": [f"{k}={set_text(v)}" for k, v in sets], "why": why, "proposed_by": by,
           "estimate": {"train_flops": est["train_flops"], "ratio_to_base": ratio,
                        "lines": estimate.summary_lines(est, lang)}}
    from lifecycle.knowledge.replicates import lab_floors
    from minimind.rundir import replicate_dirs

    seeds = proposed_seeds(len(replicate_dirs(lab.run_dir(version))), verdict, bool(lab_floors(lab)))
    if seeds > 1:  # `new --from-proposal` trains that many replicates
        out["seeds"] = seeds
        out["why"] = f"{out['why']}{phrase('sep.clause', lang)}{_t(lang, 'seeds_why', n=seeds)}"
    if fallback:
        out["fallback_reason"] = fallback
    if suggested and suggested.get("code_change"):
        out["code_change"] = suggested["code_change"]  # `new --from-proposal` has the agent implement it
    return out


def proposed_seeds(replicates: int, verdict: str, floor_measured: bool) -> int:
    """Replicates of the proposed experiment: as many as this one had when it had several (its
    verdict rests on them); 3 after an inconclusive single run in a lab that measured its noise
    floor (one run could not tell the change from another seed); else 1."""
    if replicates >= 2:
        return replicates
    if verdict == "inconclusive" and floor_measured:
        return 3
    return 1


def _base_config(lab, version: str) -> dict:
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    return load_config(lab.require_run(version) / CONFIG_FILE).to_dict()


def set_text(value: Any) -> str:
    """A proposed value as `--set KEY=VALUE` takes it (a float without binary noise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(tidy(value))
    return str(value)


def write(run_dir, proposal: dict[str, Any]) -> None:
    write_json(run_dir / NEXT_FILE, proposal)


def load(lab, version: str) -> dict[str, Any]:
    run_dir = lab.require_run(version)
    proposal = read_json(run_dir / NEXT_FILE)
    if proposal is None:
        raise UsageError(f"experiment {version} has no proposal (runs/{version}/{NEXT_FILE}): it is proposed after the analysis")
    return proposal


def summary(proposal: Optional[dict[str, Any]], lang: str = "en") -> Optional[str]:
    if not proposal:
        return None
    seeds = f" --seeds {proposal['seeds']}" if proposal.get("seeds") else ""
    return f"{proposal['goal']}: " + (" ".join(f"--set {s}" for s in proposal["sets"]) or _t(lang, "no_set")) + seeds
