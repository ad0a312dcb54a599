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
from minimind.rundir import NEXT_FILE, read_json


# The rules' sentences, en and zh (a zh record is Chinese throughout).
_T = {
    "en": {
        "entropy_goal": "Raise memory selection entropy",
        "entropy_hyp": "More query diversity lifts memory selection entropy out of danger and lowers inference loss",
        "entropy_why": "memory_entropy was in danger: the queries select too few entries",
        "loss_goal": "Slow the collapse of the train loss",
        "loss_hyp": "A halved learning rate keeps the train loss out of danger and lowers inference loss",
        "loss_why": "train_loss was in danger: the model memorises faster than it generalises",
        "half_goal": "Half the step of {keys}",
        "half_hyp": "Half the change of {keys} keeps part of the intended effect and lowers inference loss",
        "half_why": "the full change was refuted or drove a guardrail into danger",
        "forced_goal": "Repeat {version} with models/model.py passing {checks}",
        "forced_hyp": "With the preflight check {checks} passing, the run avoids the failure the forced launch showed and lowers inference loss",
        "forced_why": "{version} was launched with --force over the failed preflight check {checks}: its code is the first suspect",
        "under_goal": "Train longer: {version} is under-trained",
        "under_hyp": "Longer training brings the train loss well below the uniform loss and lowers inference loss",
        "under_why": "the train loss is still near the uniform loss with no sign of overfitting: the run is under-trained",
        "seeds_why": "{n} replicates a side, so the seed-to-seed spread is in the verdict's interval",
        "seed_goal": "Repeat with another seed",
        "seed_hyp": "The refuted result repeats with another seed (inference loss does not improve)",
        "seed_why": "no config change to step back from: a second seed tells noise from effect",
        "longer_goal": "Train the supported configuration longer",
        "longer_hyp": "Longer training of the supported configuration lowers inference loss further",
        "longer_why": "the hypothesis was supported; more training tells whether the gain grows or was early noise",
        "first_goal": "Train the reference configuration longer",
        "first_hyp": "Longer training of the reference configuration lowers inference loss",
        "first_why": "{version} is the lab's first reference (no base to compare with): more training shows how far this configuration goes",
        "noise_goal": "Train longer so the difference exceeds noise",
        "noise_hyp": "More training separates the change's effect from noise and lowers inference loss",
        "noise_why": "the result was inconclusive",
        "fallback": "The {backend} agent's next experiment was not used ({reason}); minimind's rules proposed this one.",
        "no_set": "no --set",
    },
    "zh": {
        "entropy_goal": "提高记忆选择熵",
        "entropy_hyp": "更多样的查询使记忆选择熵脱离危险区,并降低推理损失",
        "entropy_why": "memory_entropy 处于危险区:查询只选中了太少的条目",
        "loss_goal": "减缓训练损失的骤降",
        "loss_hyp": "学习率减半使训练损失不进入危险区,并降低推理损失",
        "loss_why": "train_loss 处于危险区:模型记忆的速度快于泛化",
        "half_goal": "把 {keys} 的改动减半",
        "half_hyp": "{keys} 的改动减半仍保留部分预期效果,并降低推理损失",
        "half_why": "完整的改动被否定,或使护栏进入危险区",
        "forced_goal": "在 models/model.py 通过 {checks} 后重复 {version}",
        "forced_hyp": "预检 {checks} 通过后,运行不再出现强制启动时的失败,并降低推理损失",
        "forced_why": "{version} 在预检 {checks} 未通过时用 --force 启动:首先怀疑这段代码",
        "under_goal": "延长训练:{version} 训练不足",
        "under_hyp": "更长的训练使训练损失明显低于均匀分布的损失,并降低推理损失",
        "under_why": "训练损失仍接近均匀分布的损失且没有过拟合迹象:运行训练不足",
        "seeds_why": "每边 {n} 个重复运行,使判定区间包含种子间差异",
        "seed_goal": "换一个随机种子重复实验",
        "seed_hyp": "换一个随机种子后被否定的结果依然重现(推理损失没有改善)",
        "seed_why": "没有可以回退的配置改动:第二个种子能区分噪声与真实效果",
        "longer_goal": "延长已获支持的配置的训练",
        "longer_hyp": "延长已获支持的配置的训练,推理损失进一步下降",
        "longer_why": "假设得到支持;更长的训练能说明收益是在增长还是早期噪声",
        "first_goal": "延长参照配置的训练",
        "first_hyp": "延长参照配置的训练,推理损失进一步下降",
        "first_why": "{version} 是实验室的第一个参照(没有可比的基线):更多训练能说明这一配置能走多远",
        "noise_goal": "延长训练,使差异超出噪声",
        "noise_hyp": "更多的训练能把改动的效果与噪声分开,并降低推理损失",
        "noise_why": "结果无法判定",
        "fallback": "{backend} 代理建议的下一个实验未被采用({reason});以下由 minimind 的规则给出。",
        "no_set": "无 --set",
    },
}


def _t(lang: str, key: str, **values: Any) -> str:
    return _T.get(lang, _T["en"])[key].format(**values)


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


class _Validator:
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


def _rules(validator: _Validator, version: str, cfg: dict, verdict: str, dangers: list[str], changes: list,
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

    validator = _Validator(lab)
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
        sets, goal, hypothesis, why = _rules(validator, version, cfg, verdict, dangers, changes, causes or [], lang)
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
           "sets": [f"{k}={_yaml(v)}" for k, v in sets], "why": why, "proposed_by": by,
           "estimate": {"train_flops": est["train_flops"], "ratio_to_base": ratio,
                        "lines": estimate.summary_lines(est, lang)}}
    from lifecycle.knowledge.replicates import lab_floors
    from minimind.rundir import replicate_dirs

    seeds = proposed_seeds(len(replicate_dirs(lab.run_dir(version))), verdict, bool(lab_floors(lab)))
    if seeds > 1:  # `new --from-proposal` trains that many replicates
        out["seeds"] = seeds
        out["why"] = f"{out['why']}{'；' if lang == 'zh' else '; '}{_t(lang, 'seeds_why', n=seeds)}"
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


def _yaml(value: Any) -> str:
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
