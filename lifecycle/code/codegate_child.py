"""The child side of the code gate: `python -m lifecycle.code.codegate_child request.json`.

Runs in a process started by lifecycle/code/sandbox.py, the only place where candidate model
code is imported. The checks come from this package (lifecycle/knowledge/checks.py) and the lab's
`checks.py` as committed (copied beside the request by the parent), never from anything
the candidate wrote. The stages, each stopping the rest when it fails:
  load     import the candidate; its ModelConfig builds the plan's settings
  checks   the lab's preflight checks on the candidate at the tiny size
  effect   new settings at their defaults: the candidate's forward equals the base's (same
           weights, same seed) unless the plan declared changes_default; with the plan's
           settings it differs
  smoke    a few CPU training steps at the tiny size: the loss is finite and falls
After each stage the results so far are written to the result file, so a child killed
mid-stage still says which stage it was in.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

EQUAL = 1e-5      # relative to the logits' size: fp32 CPU paths that compute one function agree to ~1e-7
DIFFERENT = 1e-4  # relative: a change that moves the logits less than this changes nothing measurable


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _exception(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith("candidate.py")]
    where = f" (models/model.py line {frames[-1].lineno})" if frames else ""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}{where}: {text}" if text else f"{type(exc).__name__}{where}"


def _tiny(module, config: dict[str, Any]) -> dict[str, Any]:
    from lifecycle.knowledge.checks import tiny_config

    return tiny_config(module, config)


def _build(module, config: dict[str, Any], state=None):
    import torch

    torch.manual_seed(0)
    model = module.MiniMindLM(module.ModelConfig.from_dict(config))
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"the base's weights {', '.join(result.unexpected_keys[:4])} have no place in the candidate")
    model.eval()
    return model


def _logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(tokens).logits


def stage_effect(base, cand, req: dict[str, Any]) -> dict[str, Any]:
    import torch

    base_cfg = _tiny(base, req["base_config"])
    cand_default = _tiny(cand, req["base_config"])  # the new settings at their defaults
    cand_plan = _tiny(cand, req["plan_config"])
    reference = _build(base, base_cfg)
    # Weights far from their small init, the same in both models: every path of the forward
    # then shows in the logits (at init a memory read moves them by ~1e-6).
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    state = reference.state_dict()
    tokens = torch.randint(1, base_cfg["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    want = _logits(reference, tokens)
    scale = 1.0 + want.abs().max().item()
    default_gap = (_logits(_build(cand, cand_default, state), tokens) - want).abs().max().item()
    plan_gap = (_logits(_build(cand, cand_plan, state), tokens) - want).abs().max().item()
    items = [{"default_vs_base": default_gap, "plan_vs_base": plan_gap, "logit_scale": scale}]
    if req["changes_default"]:
        default_line = (f"default settings: skipped as declared (changes_default); the forward differs from the "
                        f"base's by {default_gap:.3g}")
    elif not math.isfinite(default_gap) or default_gap > EQUAL * scale:
        return {"stage": "effect", "status": "failed", "items": items,
                "detail": f"with the new settings at their defaults the forward differs from the base's by up to "
                          f"{default_gap:.3g} (same weights, same seed): the change alters the default path, but the "
                          "plan did not declare changes_default",
                "lesson": "a change that is not meant to change computation must give identical outputs"}
    else:
        default_line = f"default settings: the forward equals the base's (max difference {default_gap:.1e})"
    if not math.isfinite(plan_gap) or plan_gap <= DIFFERENT * scale:
        return {"stage": "effect", "status": "failed", "items": items,
                "detail": f"{default_line}; with the plan's settings the forward equals the base's too (max difference "
                          f"{plan_gap:.1e}): the change changes nothing the experiment would measure",
                "lesson": "a plan that changes nothing must not run and be reported as a result"}
    return {"stage": "effect", "status": "passed", "items": items,
            "detail": f"{default_line}; with the plan's settings it differs (by up to {plan_gap:.3g})"}


def stage_smoke(cand, req: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    model = _build(cand, _tiny(cand, req["plan_config"]))
    model.train()
    vocab = model.config.vocab_size
    batch = torch.randint(1, vocab, (4, 17), generator=torch.Generator().manual_seed(2))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(1, req.get("smoke_steps", 20) + 1):
        out = model(batch[:, :-1])
        loss = F.cross_entropy(out.logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)) + out.aux_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        model.after_optimizer_step(step)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            return {"stage": "smoke", "status": "failed", "items": losses,
                    "detail": f"the training loss is {losses[-1]} at step {step} of a tiny CPU run"}
    if losses[-1] >= losses[0]:
        return {"stage": "smoke", "status": "failed", "items": losses,
                "detail": f"the training loss did not fall in {len(losses)} tiny CPU steps on one batch "
                          f"({losses[0]:.4f} -> {losses[-1]:.4f})"}
    return {"stage": "smoke", "status": "passed", "items": [round(x, 4) for x in losses],
            "detail": f"{len(losses)} tiny CPU steps on one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f}, finite"}


def param_count_of_change(base, req: dict[str, Any]):
    """The parameter-count check for a candidate: the count the config implies (the compute
    estimate's formula) plus the parameters the change adds, each named; anything else is the
    check's own failure."""
    from lifecycle.knowledge.checks import Result, param_count
    from lifecycle.knowledge.estimate import count_params
    from models.registry import block_specs

    def run(probe) -> Result:
        result = param_count(probe)
        model = probe.build()
        known = dict(_build(base, _tiny(base, req["base_config"])).named_parameters())
        new = {n: p.numel() for n, p in model.named_parameters() if n not in known}
        if result.status != "failed" or not new or ";" in result.detail:
            return result
        actual = sum({id(p): p.numel() for p in model.parameters()}.values())
        implied = count_params(probe.config, block_specs(probe.module)[model.config.preset])["total"]
        if actual - implied != sum(new.values()):
            return result
        names = ", ".join(list(new)[:4]) + (f" (+{len(new) - 4} more)" if len(new) > 4 else "")
        return Result.passed(f"{actual:,} parameters at the probe size: {implied:,} as the config implies plus "
                             f"{actual - implied:,} the change adds ({names})")

    return run


def stage_checks(base, cand, req: dict[str, Any], here: Path) -> dict[str, Any]:
    from lifecycle.knowledge.checks import run_all

    results = run_all(cand, req["plan_config"], here if req.get("lab_checks") else None,
                      replace={"param_count": param_count_of_change(base, req)})
    bad = [r for r in results if r["status"] == "failed"]
    if bad:
        return {"stage": "checks", "status": "failed", "items": results,
                "detail": "; ".join(f"{r['id']}: {r['detail']}" for r in bad),
                "lesson": "; ".join(f"{r['lesson']} ({r['source']})" for r in bad)}
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "could_not_check", "not_applicable")}
    return {"stage": "checks", "status": "passed", "items": results,
            "detail": f"{counts['passed']} passed, {counts['could_not_check']} could not check, "
                      f"{counts['not_applicable']} not applicable"}


def main(request_path: str) -> int:
    here = Path(request_path).resolve().parent
    req = json.loads(Path(request_path).read_text(encoding="utf-8"))
    result_path = here / req["result"]
    stages: list[dict[str, Any]] = []

    found: dict[str, Any] = {}

    def save(running: str | None) -> None:
        result_path.write_text(json.dumps({"stages": stages, "running": running, **found}, default=str),
                               encoding="utf-8")

    import torch

    torch.set_num_threads(1)
    steps = [("load", None), ("checks", None), ("effect", None), ("smoke", None)]
    modules: dict[str, Any] = {}
    for name, _ in steps:
        save(name)
        try:
            if name == "load":
                modules["base"] = _load(here / req["base"], "minimind_base")
                modules["cand"] = cand = _load(here / req["candidate"], "minimind_candidate")
                req["plan_config"] = cand.ModelConfig.from_dict({**req["base_config"], **req["model_sets"]}).to_dict()
                found.update(plan_config=req["plan_config"], schema=cand.ModelConfig.fields_schema())
                row = {"stage": "load", "status": "passed", "detail": "imports, and its ModelConfig accepts the plan's settings"}
            elif name == "checks":
                row = stage_checks(modules["base"], modules["cand"], req, here)
            elif name == "effect":
                row = stage_effect(modules["base"], modules["cand"], req)
            else:
                row = stage_smoke(modules["cand"], req)
        except BaseException as exc:  # the candidate's code: any failure is its own, reported in one line
            row = {"stage": name, "status": "failed", "detail": f"{name}: the candidate raised {_exception(exc)}"}
        stages.append(row)
        if row["status"] == "failed":
            break
    save(None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
