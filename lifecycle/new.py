"""`minimind new`: validate, plan, render, snapshot, launch — all or nothing.

Order matters: every check that can fail on bad input runs before anything is written;
the run directory is assembled in a staging folder under a per-version lock (so two
`new` of one version cannot both succeed), then the snapshot, the record and the run
directory appear together; any failure removes what this call created.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from agent import backends
from lifecycle.knowledge.bases import base_config, check_existing, finished_base, parse_sets
from minimind.atomic import write_json, write_text
from minimind.config import (AGENT_SECTIONS, agent_schema, STAGES, ExperimentConfig, apply_sets, config_hash, dump_config, from_dict,
                             load_config, parse_assignment, resolve_key)
from minimind.errors import GateRefused, MinimindError, UsageError
from minimind.guardrails import upgrade_eval
from minimind.lab import Lab
from minimind.phrases import phrase
from minimind.schema import to_dict
from minimind.settings import LabSettings
from minimind.rundir import AGENT_DIR, CONFIG_FILE, DIFF_FILE, EVAL_FILE, PLAN_FILE, ANALYSIS_FILE, update_state
from minimind.undo import Undo, raising_signals, signals_held
from minimind.versions import module_name, parse
from models.registry import model_schema, validate_model

@dataclass
class NewRequest:
    version: str
    goal: Optional[str]                  # None with --from-proposal: the proposal's
    hypothesis: Optional[str]
    base: Optional[str] = None
    expect: Optional[str] = None
    sets: list[str] = field(default_factory=list)
    agent: Optional[str] = None
    lang: Optional[str] = None
    launch: bool = True
    force: bool = False                  # launch even when a preflight check fails (recorded)
    reason: Optional[str] = None         # why, in the human's words (recorded with --force)
    yes: bool = False                    # accept a compute increase beyond preflight.compute_factor
    from_proposal: Optional[str] = None  # start from runs/V/next.json of this experiment
    stage: str = "pretrain"              # pretrain | sft (sft starts from --base's best checkpoint)
    patch: Optional[str] = None          # a human's patch to models/model.py, through the code gate (codechange.py)
    approve_code: Optional[str] = None   # a prefix of the candidate's sha256: approves exactly that code
    reject_code: Optional[str] = None    # the human's note on the agent's waiting candidate: one more agent round
    confirm_code: Any = None             # (lines) -> bool: asks the human at a terminal; None never approves
    code_change: Optional[dict] = None   # a proposal's code change (next.json), for the plan to declare
    seeds: Optional[int] = None          # replicates differing only in train.seed (None: the lab's replicates.seeds)


@dataclass
class NewResult:
    version: str
    state: str
    messages: list[str]


def model_diff(lab: Lab, base: Optional[str]) -> tuple[str, str]:
    """(unified diff of models/model.py against the base snapshot or git HEAD, what it is against)."""
    from lifecycle.document import gitops

    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    if base is not None and lab.snapshot_path(base).exists():
        old, against, label = lab.snapshot_path(base).read_text(encoding="utf-8"), f"the base snapshot `models/{module_name(base)}.py`", f"models/{module_name(base)}.py"
    else:
        head = gitops.file_at_head(lab.root, "models/model.py")
        if head is None:
            return "", "git HEAD (not tracked yet)"
        old, against, label = head, "git HEAD", "HEAD:models/model.py"
    diff = difflib.unified_diff(old.splitlines(keepends=True), living.splitlines(keepends=True),
                                fromfile=label, tofile="models/model.py")
    return "".join(diff), against


def _from_proposal(lab: Lab, req: NewRequest) -> NewRequest:
    """The request with runs/V/next.json filled in where the human gave nothing; the human's flags win."""
    import dataclasses

    from lifecycle.knowledge import proposal

    parse(req.from_proposal)
    p = proposal.load(lab, req.from_proposal)
    return dataclasses.replace(req, goal=req.goal or p["goal"], hypothesis=req.hypothesis or p["hypothesis"],
                               expect=req.expect or p.get("expect"), base=req.base or p.get("base"),
                               sets=[*p.get("sets", []), *req.sets],  # later --set wins: the human's come last
                               code_change=p.get("code_change"),
                               seeds=req.seeds if req.seeds is not None else p.get("seeds"))


@dataclass
class Inputs:
    """What validation resolved for one `new`: what the plan and the preflight are asked with."""
    req: NewRequest
    settings: LabSettings
    base: Optional[str]
    start: dict[str, Any]               # the base's config (and the SFT start), before any change
    sets: list[tuple[str, Any]]         # the human's --set items, parsed
    model_cls: Any                      # the living models/model.py ModelConfig
    model_fields: dict[str, dict]
    backend: str                        # the agent backend asked for
    lang: str
    human_config: dict[str, Any]        # `start` with the human's --set applied, model validated


@dataclass
class Preflight:
    """The checks and the compute estimate of one resolved config."""
    checks: list[dict[str, Any]]
    record: dict[str, Any]              # what plan.json keeps, in the record's language
    estimate: dict[str, Any]            # plan.json's estimate, with its lines in the record's language
    lines: list[str]                    # the checks, for the CLI
    estimate_lines: list[str]           # the estimate and the compute note, for the CLI


@dataclass
class Plan:
    """The agent's plan applied: the config that runs, plan.json, and the model diff it was made against."""
    cfg: ExperimentConfig
    record: dict[str, Any]
    diff: str
    head: dict[str, Any]                # git HEAD when planned: commit and dirty


def create_experiment(lab: Lab, req: NewRequest, _code: Any = None) -> NewResult:
    if req.reject_code is not None:  # refused before the plan: nothing is asked that cannot be used
        from lifecycle.code.codechange import check_rejection

        parse(req.version)
        check_rejection(lab, req, req.agent or lab.settings().agent.backend)
    if req.patch and _code is None:  # a code change: gated and approved first (lifecycle/code/codechange.py)
        from lifecycle.code.codechange import run_with_code_change

        return run_with_code_change(lab, req, create_experiment)
    inputs = _validate(lab, req)
    # Before the agent is asked anything: can the human's config run at all, and does the code pass the lessons?
    preflight = _preflight(lab, inputs, inputs.human_config, _code)
    with StagedRun(lab, inputs.req.version) as staged:
        plan, preflight, notes, _code = _assemble(lab, inputs, preflight, staged, _code)
    messages = _report(inputs, plan, preflight, notes)
    if not inputs.req.launch:
        messages.append(f"State: drafted. Launch with: minimind resume {req.version}")
        return NewResult(req.version, "drafted", messages)
    return _launch(lab, inputs, messages)


def _validate(lab: Lab, req: NewRequest) -> Inputs:
    """Every check that can fail on bad input, before anything is written; the resolved inputs."""
    parse(req.version)
    if req.force and not (req.reason or "").strip():
        raise UsageError("--force needs --reason: say why launching over a failed check is right here "
                         "(the record keeps it)")
    settings = lab.settings()
    check_existing(lab, req.version)
    if req.from_proposal:
        req = _from_proposal(lab, req)
    if (req.approve_code or req.reject_code is not None) and req.code_change is None:
        from lifecycle.code.codechange import read_pending

        # the plan is asked again: the change the waiting candidate was written for stands if the plan leaves it out
        kept = read_pending(lab, req.version)
        req.code_change = kept[0].get("change") if kept else None
    if req.seeds is None:  # --seeds, else the proposal's, else the lab's
        req.seeds = settings.replicates.seeds
    from lifecycle.knowledge.replicates import MAX_SEEDS

    if not 1 <= req.seeds <= MAX_SEEDS:
        raise UsageError(f"--seeds must be between 1 and {MAX_SEEDS}, got {req.seeds}")
    req.goal, req.hypothesis = req.goal or "", req.hypothesis or ""
    if not req.goal.strip() or not req.hypothesis.strip():
        raise UsageError("--goal and --hypothesis must not be empty")
    if req.stage not in STAGES:
        raise UsageError(f"--stage must be one of {', '.join(STAGES)}, got {req.stage!r}")
    if req.stage == "sft" and req.base is None:
        raise UsageError("--stage sft needs --base V: the pretrain experiment whose best checkpoint it starts from")
    if req.base is not None:
        parse(req.base)
        if not (lab.run_dir(req.base) / CONFIG_FILE).exists():
            raise UsageError(f"base experiment {req.base} does not exist")
        base = req.base
    else:
        base = finished_base(lab, req.version)
    init = sft_start(lab, base) if req.stage == "sft" else None
    model_cls, model_fields = model_schema(lab)
    sets = parse_sets(req.sets, model_fields)
    for key, _ in sets:  # unknown keys fail now, before the agent is asked anything
        resolve_key(key, model_fields)
    start = {"stage": req.stage, **({"init": init} if init else {}),
             **base_config(lab, settings, base, model_cls)}
    human_config = apply_sets(start, sets, model_fields)  # types and ranges of the human's values
    requested = backends.check_name(req.agent or settings.agent.backend, "--agent" if req.agent else
                                    f"{lab.settings_path.name}: agent.backend")
    missing = backends.unavailable(requested)
    if missing:
        raise MinimindError(missing)
    snapshot = lab.snapshot_path(req.version)
    living = lab.models_dir / "model.py"
    if snapshot.exists() and snapshot.read_bytes() != living.read_bytes():
        raise GateRefused(f"{snapshot.relative_to(lab.root)} exists and differs from models/model.py (a snapshot is never edited)")
    human_config["model"] = validate_model(model_cls, human_config["model"])
    return Inputs(req=req, settings=settings, base=base, start=start, sets=sets, model_cls=model_cls,
                  model_fields=model_fields, backend=requested, lang=req.lang or settings.agent.lang,
                  human_config=human_config)


class StagedRun:
    """The lock, the staging folder and the rollback of one `new`.

    `runs/.V.lock` (O_EXCL) makes two `new` of one version unable to both succeed; the run
    directory is assembled in a staging folder and renamed into place. From the lock on,
    SIGTERM and SIGHUP raise (SIGINT already does), so a killed `new` is undone like a failed
    one: the staging folder, every path `created` lists (each listed before it is written,
    so a kill mid-write is undone too), the notebook and lessons as they were, and the
    living model file when an approved code change was installed (`restore_living`)."""

    def __init__(self, lab: Lab, version: str):
        self.lab, self.version = lab, version
        self.lock = lab.runs_dir / f".{version}.lock"
        self.staging = lab.runs_dir / f".staging-{version}-{os.getpid()}"
        self.created: list[Path] = []
        self.restore_living: Optional[Callable[[], None]] = None
        self._undo = Undo()
        self._ours = False  # the lock is this call's (never remove another `new`'s)

    def __enter__(self) -> "StagedRun":
        self.lab.runs_dir.mkdir(parents=True, exist_ok=True)
        self._signals = raising_signals()
        try:
            with signals_held():  # a signal between the create and `_ours` would leave the lock behind
                try:
                    os.close(os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    raise MinimindError(f"another 'minimind new {self.version}' is in progress") from None
                self._ours = True
            self._undo.keep(self.lab.experiment_dir / "INDEX.md", self.lab.experiment_dir / "LESSONS.md")
            check_existing(self.lab, self.version)  # re-check under the lock
            self.staging.mkdir()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        with signals_held():  # done, or a second kill waits until the undo is done
            if exc_type is not None:
                if self.restore_living is not None:
                    self.restore_living()
                _keep_call_log(self.lab, self.version, self.staging)
                shutil.rmtree(self.staging, ignore_errors=True)
                for path in reversed(self.created):
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                self._undo.rollback()
            if self._ours:
                self.lock.unlink(missing_ok=True)
                self._ours = False
            self._signals.restore()
        return False


def _assemble(lab: Lab, inputs: Inputs, preflight: Preflight, staged: StagedRun, code: Any):
    """Plan, implement a code change, render and snapshot in the staging folder, then rename it
    into runs/V with its replicates, record and notebook row; (plan, preflight, notes, code)."""
    from lifecycle.knowledge import lessons

    req = inputs.req
    seeded = lessons.ensure(lab)  # a lab made before lessons files existed gets the seed
    if seeded is not None:
        staged.created.append(seeded)
    plan = _plan(lab, inputs, staged.staging, preflight.checks)
    cfg = plan.cfg
    if plan.record.get("code_change") and code is None:  # the agent's code change: implemented, gated, approved
        from lifecycle.code.codechange import implement_step

        code, cfg, staged.restore_living = implement_step(lab, req, cfg, plan.record, staged.staging / AGENT_DIR,
                                                          inputs.settings.agent)
        plan.cfg = cfg
        plan.record["config_hash"] = config_hash(cfg)
        plan.diff, plan.record["diff_against"] = model_diff(lab, inputs.base)
        plan.record["model_changed"] = True
    if cfg.model != inputs.human_config["model"]:  # the agent changed the model: its config is what runs
        preflight = _preflight(lab, inputs, cfg.to_dict(), code)
    if cfg.stage == "sft":  # the base's weights must load strictly into what this experiment builds
        from training.sft import check_init_fits

        check_init_fits(lab, cfg)
    plan.record.update(preflight=preflight.record, estimate=preflight.estimate)
    from lifecycle.running.launch import upgrade_legacy_template

    notes = upgrade_legacy_template(lab)
    notes += _stage_files(lab, plan, staged.staging)
    if code is not None:
        from lifecycle.code.codechange import write_files

        write_files(staged.staging, *code)
    if req.launch:
        # a code change's new settings are the candidate's, not the living class's: the living
        # fields are enough to tell whether the model reads a bank
        known = {k: v for k, v in cfg.model.items() if k in inputs.model_cls.fields_schema()}
        _require_data(lab, cfg, inputs.model_cls.from_dict(known).has_memory)
        from lifecycle.running.launch import check_launch

        check_launch(lab, cfg)
    from models.registry import snapshot as take_snapshot

    snapshot = lab.snapshot_path(req.version)
    if not snapshot.exists():
        staged.created.append(snapshot)
    path, sha = take_snapshot(lab.models_dir, req.version)
    update_state(staged.staging, snapshot={"module": cfg.model_module, "sha256": sha})
    final = lab.run_dir(req.version)
    staged.created.append(final)  # absent before (checked under the lock)
    os.rename(staged.staging, final)
    if req.seeds > 1:  # the other replicates: runs/V/seeds/<seed>, removed with `final` on failure
        from lifecycle.running.launch import create_replicates

        create_replicates(lab, req.version, req.seeds)
    from lifecycle.document.record import write_record

    staged.created.append(lab.record_path(req.version))
    write_record(lab, req.version, inputs.lang)
    from lifecycle.knowledge.notebook import write_index

    write_index(lab)
    return plan, preflight, notes, code


def _report(inputs: Inputs, plan: Plan, preflight: Preflight, notes: list[str]) -> list[str]:
    """What `new` tells the human about the experiment it created."""
    req, cfg = inputs.req, plan.cfg
    messages = [f"Created experiment {req.version} (base {inputs.base or 'none'}, agent {plan.record['backend']})",
                f"  record:   experiment/experiment_{req.version}.md",
                f"  config:   runs/{req.version}/config.yaml",
                f"  snapshot: models/{cfg.model_module}.py",
                *([f"  stage:    sft, from experiment {cfg.init.version}'s {cfg.init.checkpoint} "
                   f"(step {cfg.init.step}, sha256 {cfg.init.sha256[:12]})"] if cfg.init else []),
                "Preflight checks (tiny model, CPU):", *preflight.lines,
                "Compute estimate:", *(f"  {line}" for line in preflight.estimate_lines)]
    if plan.record.get("note"):
        messages.append(f"  note: {plan.record['note']}")
    return messages + notes


def _launch(lab: Lab, inputs: Inputs, messages: list[str]) -> NewResult:
    """Start the experiment's run (or its replicates, each a run) detached; the result `new` returns."""
    from lifecycle.code.codechange import verify_at_launch
    from lifecycle.document.record import write_record
    from lifecycle.running.launch import launched_message, start_detached

    req = inputs.req
    verify_at_launch(lab, req.version)
    if req.seeds > 1:
        from lifecycle.running.launch import launch_replicates
        from minimind.rundir import replicate_dirs, run_label

        runs = replicate_dirs(lab.run_dir(req.version))
        infos = launch_replicates(lab, runs)
        write_record(lab, req.version, inputs.lang)
        messages.append(f"Replicates: {len(runs)} (seeds {', '.join(str(s) for s in _seeds(runs))}), "
                        "analysed and committed as one experiment")
        messages += [f"  {run_label(r)}: " + launched_message(i, run_label(r)).split(". Follow")[0]
                     + (f" ({i.state})" if i.state == "queued" else "") for r, i in zip(runs, infos)]
        messages.append(f"Follow: minimind status {req.version} · minimind log {req.version}@SEED -f")
        return NewResult(req.version, "queued" if all(i.state == "queued" for i in infos) else infos[0].state,
                         messages)
    info = start_detached(lab, lab.run_dir(req.version))
    write_record(lab, req.version, inputs.lang)
    messages.append(launched_message(info, req.version))
    return NewResult(req.version, info.state, messages)


def _seeds(runs: list[Path]) -> list[Optional[int]]:
    from lifecycle.knowledge.replicates import seed_of

    return [seed_of(r) for r in runs]


def _preflight(lab: Lab, inputs: Inputs, config: dict, code: Any = None) -> Preflight:
    """The compute estimate and the checks of a resolved config; refuses what cannot or may not launch.
    What the record keeps is in the record's language (`lang`); what the CLI prints is English."""
    from lifecycle import check
    from lifecycle.knowledge import estimate
    from models.registry import load_module

    req, settings, lang = inputs.req, inputs.settings, inputs.lang
    resolved = from_dict({"version": req.version, "base": None, "model_module": "model", **config}, where="resolved config")
    _refuse_unrunnable(lab, req, resolved, inputs.model_cls)
    cfg = resolved.to_dict()
    est = estimate.estimate(lab, cfg)
    estimate.refuse_if_cannot_run(lab, cfg, est)
    est = estimate.for_replicates(est, req.seeds or 1)  # the gate and the record count every replicate
    problem = estimate.check_positions(load_module(lab.models_dir, "model"), cfg["model"])
    if problem:
        raise GateRefused(f"this config cannot run: {problem}")
    base = inputs.base
    compute_note = estimate.gate(lab, cfg, est, base, settings.preflight.compute_factor, req.yes, req.launch)
    record_note = (estimate.gate(lab, cfg, est, base, settings.preflight.compute_factor, req.yes, req.launch, lang)
                   if compute_note and lang != "en" else compute_note)
    if code is not None:  # a code change: its checks ran in the gate's isolated child, counting its new parameters
        from lifecycle.code.codechange import gate_checks

        results = gate_checks(code[0])
    else:
        results = check.run_preflight(lab, "model", cfg["model"])
    refused = check.refusal(results)
    if refused and not req.force:
        raise GateRefused(refused)
    record = {"checks": results, "forced": bool(refused and req.force),
              "reason": req.reason if refused and req.force else None,
              "compute_note": record_note, "compute_accepted": bool(compute_note and req.yes)}
    return Preflight(checks=results, record=record, estimate={**est, "lines": estimate.summary_lines(est, lang)},
                     lines=check.lines(results), estimate_lines=estimate.summary_lines(est)
                     + ([f"note: {compute_note}" + (" (accepted with --yes)" if req.yes else " (drafted, not launched)")]
                        if compute_note else []))


def _keep_call_log(lab: Lab, version: str, staging: Path) -> None:
    """A failed attempt's agent calls were made and may have been billed: keep their log
    in runs/.failed/<version>-<time>/agent, where the next attempt's budget counts them."""
    from agent.calllog import CALLS_FILE, FAILED_DIR, read_calls

    log = staging / AGENT_DIR / CALLS_FILE
    if not log.is_file() or all(c.get("backend") == "offline" for c in read_calls(staging / AGENT_DIR)):
        return  # nothing was spent: a failed offline attempt leaves the lab as it was
    name = f"{version}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    folder, n = lab.runs_dir / FAILED_DIR / name, 1
    while folder.exists():  # two failed attempts in one second of one process: each keeps its own folder
        n += 1
        folder = lab.runs_dir / FAILED_DIR / f"{name}-{n}"
    target = folder / AGENT_DIR
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / AGENT_DIR), str(target))
    except OSError:
        pass  # keeping the log must never hide the error that failed the attempt


def _plan(lab: Lab, inputs: Inputs, staging: Path, checks: list[dict[str, Any]]) -> Plan:
    """Ask the agent, apply its changes then the human's, validate."""
    from agent.base import PlanContext, lessons_text
    from agent.prose import notes_line
    from lifecycle.knowledge import notebook
    from lifecycle.knowledge import lessons
    from minimind.config import flatten
    from minimind.rundir import read_json
    from models.registry import memory_presets

    req, settings, base, start, sets, lang = inputs.req, inputs.settings, inputs.base, inputs.start, inputs.sets, inputs.lang
    model_cls, model_fields, requested = inputs.model_cls, inputs.model_fields, inputs.backend
    schema = agent_schema(model_fields)
    diff_text, against = model_diff(lab, base)
    base_record = ""
    if base is not None:
        plan = read_json(lab.run_dir(base) / PLAN_FILE) or {}
        analysis = read_json(lab.run_dir(base) / ANALYSIS_FILE) or {}
        base_record = (f"goal: {plan.get('goal', '')}\nhypothesis: {plan.get('hypothesis', '')}\n"
                       f"verdict: {analysis.get('verdict_info', {}).get('verdict', 'not analysed')}\n"
                       f"conclusion: {analysis.get('conclusion', '')}")
    # The rules this run will have: the lab's, with any the human set for it.
    guardrails = {k: v for k, v in inputs.human_config["guardrails"].items() if isinstance(v, dict)}
    from lifecycle.knowledge.replicates import lab_floors
    from minimind.rundir import replicate_dirs

    ctx = PlanContext(version=req.version, base=base, goal=req.goal, hypothesis=req.hypothesis, expect=req.expect,
                      sets=sets, base_config=start, base_record_summary=base_record,
                      base_eval=upgrade_eval(read_json(lab.run_dir(base) / EVAL_FILE)) if base else None,
                      model_diff=diff_text, config_schema=schema, guardrails=guardrails, lessons=lessons_text(guardrails, lessons.lines(lab, lang)),
                      memory_presets=memory_presets(lab.models_dir), lang=lang, checks=list(checks),
                      notebook=notebook.trace(lab), code_change=req.code_change,
                      noise_floor={m: f.to_dict() for m, f in lab_floors(lab).items()},
                      base_replicates=len(replicate_dirs(lab.run_dir(base))) if base else 1)
    from agent.calllog import failed_attempt_logs

    plan, note = backends.call(requested, settings.agent, staging / AGENT_DIR, "plan", ctx,
                               failed_attempt_logs(lab.runs_dir, req.version))
    if req.code_change and not plan.code_change:  # the proposal's code change stands when the plan leaves it out
        plan.code_change = req.code_change

    human = [(".".join(resolve_key(k, model_fields)), v) for k, v in sets]
    dropped = list(plan.notes)
    agent_changes = []
    code_sets = {k: v for k, v in plan.changes.items() if plan.code_change and k.removeprefix("model.") not in model_fields
                 and k.startswith("model.")}  # new settings of the code change: the candidate's schema checks them
    for key, value in plan.changes.items():
        if key in code_sets:
            continue
        full = ".".join(resolve_key(key, model_fields))
        if full.split(".")[0] not in AGENT_SECTIONS:
            raise MinimindError(f"agent proposed '{key}', which it may not change")
        if full in dict(human):  # the human's --set wins, whatever the agent proposed
            dropped.append(f"{full}: the agent proposed {value!r}, but the human set it to {dict(human)[full]!r} "
                           "with --set; the human's value is kept and the proposal dropped")
            continue
        agent_changes.append((full, value))
    try:
        config = apply_sets(start, agent_changes, model_fields)
    except UsageError as exc:
        raise MinimindError(f"agent proposed an invalid value: {exc}") from None
    config = apply_sets(config, human, model_fields)
    config["model"] = validate_model(model_cls, config["model"])
    cfg: ExperimentConfig = from_dict({"version": req.version, "base": base, "model_module": module_name(req.version),
                                       **config}, where="resolved config")
    before, after = flatten(start), flatten(cfg.to_dict())
    why = {".".join(resolve_key(k, model_fields)): v for k, v in plan.rationale.items() if _resolvable(k, model_fields)}
    changes = []
    for key in sorted({k for k, _ in agent_changes} | {k for k, _ in human}):
        if before.get(key) == after.get(key):
            continue  # a value equal to the base's is not a change
        source = (phrase("new.set_by_human", lang) if key in dict(human)
                  else why.get(key, phrase("new.proposed_by_agent", lang)))
        changes.append({"key": key, "base": before.get(key), "new": after.get(key), "why": source})
    from lifecycle.document import gitops

    head = gitops.head_info(lab.root)
    plan_record = {
        "version": req.version, "base": base, "goal": req.goal, "hypothesis": req.hypothesis, "expect": req.expect,
        "sets": [[k, v] for k, v in sets], "agent_requested": requested, "backend": plan.backend,
        "note": " ".join(p for p in [note, *(_dropped_note(d, lang) for d in dropped), notes_line(plan.replaced)] if p),
        "dropped": dropped,
        "lang": lang, "thinking": plan.thinking, "expected": plan.expected, "risks": plan.risks, "changes": changes,
        "config_hash": config_hash(cfg), "diff_against": against, "model_changed": bool(diff_text.strip()),
        # whether the model has a memory bank, from the registry: the record reads it without importing torch
        "has_memory": cfg.model.get("preset") in ctx.memory_presets,
        "git_commit": head["commit"], "git_dirty": head["dirty"], "created_at": time.time(),
    }
    if plan.code_change:
        plan_record.update(code_change=plan.code_change, code_sets=code_sets)
        changes += [{"key": k, "base": None, "new": v, "why": plan.rationale.get(k, "a new setting of the code change")}
                    for k, v in sorted(code_sets.items())]
    return Plan(cfg=cfg, record=plan_record, diff=diff_text, head=head)


def _dropped_note(line: str, lang: str) -> str:
    return phrase("new.dropped", lang, setting=line.split(":", 1)[0])


def _resolvable(key: str, model_fields: dict) -> bool:
    try:
        resolve_key(key, model_fields)
        return True
    except UsageError:
        return False


def _stage_files(lab: Lab, plan: Plan, staging: Path) -> list[str]:
    """The run's files in the staging folder; returns what the launch files tell the user."""
    from lifecycle.running.launch import write_launch_files, write_run_script

    cfg, plan_record, head = plan.cfg, plan.record, plan.head
    write_text(staging / CONFIG_FILE, dump_config(cfg))
    write_json(staging / PLAN_FILE, plan_record)
    write_text(staging / DIFF_FILE, plan.diff)
    write_run_script(lab, cfg, staging, lab.run_dir(cfg.version))
    notes = write_launch_files(lab, cfg, staging, lab.run_dir(cfg.version))
    (staging / AGENT_DIR).mkdir(exist_ok=True)
    update_state(staging, version=cfg.version, base=cfg.base, state="drafted", pid=None, pgid=None, proc_start=None,
                 started_at=None, ended_at=None, exit_code=None, heartbeat=None, step=0, total_steps=None,
                 last_loss=None, eta_s=None, guardrails={}, git=head, agent_backend=plan_record["backend"],
                 evaluated=False, analysed=False, reviewed=False, committed=False,
                 stage=cfg.stage, init=to_dict(cfg.init) if cfg.init else {})
    return notes


def sft_start(lab: Lab, base: str) -> dict[str, Any]:
    """The `init` of an SFT experiment: the pretrain base's best checkpoint, if it has one to give."""
    from minimind.rundir import CHECKPOINTS_DIR, best_checkpoint, current
    from models.registry import sha256_file

    run_dir = lab.run_dir(base)
    base_cfg = load_config(run_dir / CONFIG_FILE)
    if base_cfg.stage != "pretrain":
        raise UsageError(f"base experiment {base} is a {base_cfg.stage} experiment; --stage sft starts from a pretrain one")
    state, _ = current(run_dir)
    if state != "finished":
        raise MinimindError(f"base experiment {base} is {state}, not finished: SFT starts from a finished pretrain experiment")
    path = run_dir / CHECKPOINTS_DIR / best_checkpoint(base_cfg.model["dim"], base_cfg.stage)
    if not path.is_file():
        raise MinimindError(f"base experiment {base} has no best checkpoint ({path.relative_to(lab.root)})")
    from models.registry import read_checkpoint

    step = read_checkpoint(path).get("step")
    return {"version": base, "checkpoint": str(path.relative_to(lab.root)), "sha256": sha256_file(path),
            "step": step if isinstance(step, int) else None}


def _refuse_unrunnable(lab: Lab, req: NewRequest, cfg: ExperimentConfig, model_cls) -> None:
    """What cannot run, refused before anything is written: guardrails turned around, GPUs that
    are not there, a data path the human set that does not exist, and, for a launch, any data
    file the run would read (a path every later experiment would otherwise inherit)."""
    from lifecycle.running.slots import check_devices
    from minimind.guardrails import flipped

    problems = flipped(cfg.guardrails)
    if problems:
        raise UsageError(problems[0])
    check_devices(cfg)
    model_fields = model_cls.fields_schema()
    typed = {resolve_key(key, model_fields) for key, _ in (parse_assignment(item) for item in req.sets)}
    for name in DATA_PATHS:
        rel = getattr(cfg.data, name)
        if ("data", name) in typed and rel is not None and not lab.resolve(rel).exists():
            raise UsageError(f"data.{name} {rel} does not exist (set with --set)")
    if req.launch:
        # a code change's new settings are the candidate's, not the living class's: the living
        # fields are enough to tell whether the model reads a bank
        known = {k: v for k, v in cfg.model.items() if k in model_fields}
        _require_data(lab, cfg, model_cls.from_dict(known).has_memory)


# The data files a run reads, by config key; the others (probes, sft_eval, sft_split) are
# skipped when missing, by design, so a lab without SFT data still trains.
DATA_PATHS = ("pretrain", "tokenizer", "knowledge", "probes", "sft", "sft_eval", "sft_split", "chat_template")


def _require_data(lab: Lab, cfg: ExperimentConfig, has_memory: bool) -> None:
    needed = ["pretrain", "tokenizer"] + (["sft"] if cfg.stage == "sft" else [])
    needed += ["knowledge"] * bool(has_memory and cfg.data.knowledge) + ["chat_template"] * bool(cfg.data.chat_template)
    for name in needed:
        rel = getattr(cfg.data, name)
        if not lab.resolve(rel).exists():
            raise MinimindError(f"data.{name} {rel} does not exist: run 'minimind data build' (or 'data prepare'), "
                                "or use --no-launch")
