"""Next-experiment proposals: the analysis's structured next step, `runs/V/next.json`.

A proposal is {base, goal, hypothesis, sets: ["key=value", ...], expect, why, proposed_by,
estimate[, fallback_reason]}. Under the claude backend the model proposes it in the
analysis (agent/tools.py validates its keys, values, expect and base); it is used when
the config it yields validates as `new` would validate it. Otherwise, and under the
offline backend, it is derived from the numbers by rule (a refuted change is tried at
half the step; a guardrail in danger gets its remedy; a supported one is trained longer;
an inconclusive one gets more steps), and `fallback_reason` says why the model's was not
used. Its `--set` values are validated against the config schema before it is stored,
and its estimated cost is the compute estimate of the config it would produce. Its
sentences follow the record's language (en/zh). `minimind new V2 --from-proposal V` starts from it; the human's
flags win.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from minimind.atomic import write_json
from minimind.errors import MinimindError, UsageError
from minimind.rundir import NEXT_FILE, read_json


def _midpoint(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    mid = (a + b) / 2
    return int(round(mid)) if isinstance(a, int) and isinstance(b, int) else mid


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
        "seed_goal": "Repeat with another seed",
        "seed_hyp": "The refuted result repeats with another seed (inference loss does not improve)",
        "seed_why": "no config change to step back from: a second seed tells noise from effect",
        "longer_goal": "Train the supported configuration longer",
        "longer_hyp": "Longer training of the supported configuration lowers inference loss further",
        "longer_why": "the hypothesis was supported; more training tells whether the gain grows or was early noise",
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
        "seed_goal": "换一个随机种子重复实验",
        "seed_hyp": "换一个随机种子后被否定的结果依然重现(推理损失没有改善)",
        "seed_why": "没有可以回退的配置改动:第二个种子能区分噪声与真实效果",
        "longer_goal": "延长已获支持的配置的训练",
        "longer_hyp": "延长已获支持的配置的训练,推理损失进一步下降",
        "longer_why": "假设得到支持;更长的训练能说明收益是在增长还是早期噪声",
        "noise_goal": "延长训练,使差异超出噪声",
        "noise_hyp": "更多的训练能把改动的效果与噪声分开,并降低推理损失",
        "noise_why": "结果无法判定",
        "fallback": "{backend} 代理建议的下一个实验未被采用({reason});以下由 minimind 的规则给出。",
        "no_set": "无 --set",
    },
}


def _t(lang: str, key: str, **values: Any) -> str:
    return _T.get(lang, _T["en"])[key].format(**values)


def _rules(cfg: dict, verdict: str, dangers: list[str], changes: list,
           lang: str = "en") -> tuple[list[tuple[str, Any]], str, str, str]:
    """(sets, goal, hypothesis, why) for the next experiment."""
    m, t = cfg["model"], cfg["train"]

    def said(name: str, **values: Any) -> tuple[str, str, str]:
        return tuple(_t(lang, f"{name}_{part}", **values) for part in ("goal", "hyp", "why"))

    if "memory_entropy" in dangers and m.get("preset") in ("memory", "hybrid"):
        side = math.isqrt(m["knowledge_num"])
        more = min(side, m["num_candidates"] * 2)
        sets = [("model.num_candidates", more)] if more > m["num_candidates"] else [("model.diversity_loss_weight", 0.1)]
        return (sets, *said("entropy"))
    if "train_loss" in dangers:
        return ([("train.learning_rate", t["learning_rate"] / 2)], *said("loss"))
    numeric = [(k, _midpoint(a, b)) for k, a, b in changes if k.split(".")[0] in ("model", "train")]
    numeric = [(k, v) for k, v in numeric if v is not None]
    if verdict == "refuted" or any(d in dangers for d in ("train_inference_ratio", "repetition_rate")):
        if numeric:
            return (numeric, *said("half", keys=", ".join(k for k, _ in numeric)))
        return ([("train.seed", t["seed"] + 1)], *said("seed"))
    steps = t["max_steps"] * 2 if t["max_steps"] else None
    longer = [("train.max_steps", steps)] if steps else [("train.epochs", min(1000, t["epochs"] + 1))]
    if verdict == "supported":
        return (longer, *said("longer"))
    return (longer, *said("noise"))


def _validated(lab, cfg: dict, sets: list[tuple[str, Any]]) -> dict:
    """The config `sets` give on `cfg`, validated as `new` validates it (types, ranges, the model's own checks)."""
    from lifecycle.new import model_schema, validate_model
    from minimind.config import apply_sets

    model_cls, fields = model_schema(lab)
    proposed = apply_sets(cfg, sets, fields)  # types and ranges against the schema
    proposed["model"] = validate_model(model_cls, proposed["model"])
    return proposed


def build(lab, version: str, cfg: dict, verdict: str, dangers: list[str], changes: list, lang: str = "en",
          suggested: Optional[dict[str, Any]] = None, backend: Optional[str] = None) -> dict[str, Any]:
    """The validated proposal for the experiment after `version`.

    `suggested`: the agent's next experiment (agent/tools.py checked its keys, values, expect and
    base); it is used when the config it yields validates, else the rules propose and the
    proposal says why (`fallback_reason`)."""
    from lifecycle import estimate

    fallback = None
    base_cfg = cfg
    if suggested:
        sets = list((suggested.get("sets") or {}).items())
        base = suggested.get("base") or version
        try:
            if base != version:
                base_cfg = _base_config(lab, base)
            proposed = _validated(lab, base_cfg, sets)
        except (UsageError, MinimindError) as exc:
            fallback = _t(lang, "fallback", backend=backend or "agent", reason=str(exc).splitlines()[0])
            suggested, base_cfg = None, cfg
        else:
            goal, hypothesis, why = suggested["goal"], suggested["hypothesis"], suggested["why"]
            expect = suggested.get("expect") or "inference_loss < base"
            by = backend or "agent"
    if not suggested:
        base = version
        sets, goal, hypothesis, why = _rules(cfg, verdict, dangers, changes, lang)
        expect, by = "inference_loss < base", "rules"
        try:
            proposed = _validated(lab, cfg, sets)
        except UsageError as exc:
            raise MinimindError(f"the next-experiment proposal does not validate: {exc}") from None
    est = estimate.estimate(lab, proposed)
    base_est = estimate.estimate(lab, base_cfg)
    ratio = est["train_flops"] / base_est["train_flops"] if est["train_flops"] and base_est["train_flops"] else None
    out = {"base": base, "goal": goal, "hypothesis": hypothesis, "expect": expect,
           "sets": [f"{k}={_yaml(v)}" for k, v in sets], "why": why, "proposed_by": by,
           "estimate": {"train_flops": est["train_flops"], "ratio_to_base": ratio,
                        "lines": estimate.summary_lines(est, lang)}}
    if fallback:
        out["fallback_reason"] = fallback
    if suggested and suggested.get("code_change"):
        out["code_change"] = suggested["code_change"]  # `new --from-proposal` has the agent implement it
    return out


def _base_config(lab, version: str) -> dict:
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    return load_config(lab.require_run(version) / CONFIG_FILE).to_dict()


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
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
    return f"{proposal['goal']}: " + (" ".join(f"--set {s}" for s in proposal["sets"]) or _t(lang, "no_set"))
