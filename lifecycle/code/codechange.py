"""A code experiment's change to `models/model.py`: gate, approval, install, record, undo.

The change comes from a human's patch (`new --patch change.diff`) or from the agent's
implement step (lifecycle/implement.py). Either way:
1. the candidate passes the code gate (lifecycle/code/codegate.py) without being imported here;
2. the human sees each hunk with its reason, the touched symbols, the new settings, the
   stage results and the isolation used, and approves the exact bytes: interactively, or
   with `--approve-code SHA` (a prefix of the candidate's sha256). `--yes` accepts the
   compute gate only, never code. An unapproved candidate is kept in runs/.pending/V/;
3. on approval the candidate becomes the living `models/model.py` (restored if `new` fails
   afterwards), is snapshotted as every experiment's model is, and its sha256 is checked
   again before the run launches (`new`, `resume`);
4. `runs/V/code_change.json` keeps every round, edit, reason, stage result, the isolation
   and the approval; `runs/V/model.patch` is the change as `git apply` takes it;
5. `minimind undo-code V` reverse-applies that patch to the living file, or refuses.

A candidate the agent wrote can also be rejected with a note (`new V ... --reject-code NOTE`):
the note is one more agent round over the kept candidate (the implement step's own bounds),
the revision passes the gate again and waits for approval again; the rejection is a round of
its own in the candidate's `rounds`. Until approval the living file is never written.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lifecycle.code import codestatic
from lifecycle.code.codegate import CodeChange, GateReport, validate
from minimind.atomic import write_json, write_text
from minimind.errors import GateRefused, MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import CODE_CHANGE_FILE, PATCH_FILE, PENDING_DIR
MIN_SHA_PREFIX = 8


@dataclass
class Candidate:
    """A gated candidate: its text, the gate's report, where it came from, its rounds."""

    base: str
    text: str
    report: GateReport
    source: str                                  # "patch" or "agent"
    change: Optional[CodeChange] = None
    rounds: list[dict[str, Any]] = field(default_factory=list)   # agent submissions and human rejections, in order
    reasons: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return self.report.sha256


# --- a human's patch ------------------------------------------------------------------------

def apply_patch(living: str, patch_path: Path) -> tuple[str, tuple[str, ...]]:
    """The living file with the patch applied (by `git apply`, in a scratch folder), and the files it touches."""
    if not patch_path.is_file():
        raise UsageError(f"--patch {patch_path}: no such file")
    work = Path(tempfile.mkdtemp(prefix="minimind-patch-"))
    try:
        (work / "models").mkdir()
        (work / codestatic.MODEL_PATH).write_text(living, encoding="utf-8")
        patch = work / "change.diff"
        shutil.copyfile(patch_path, patch)
        stat = _git(["apply", "--numstat", str(patch)], work)
        if stat.returncode != 0:
            raise UsageError(f"--patch {patch_path}: not a patch git can read: {_first(stat.stderr)}")
        files = tuple(line.split("\t")[-1] for line in stat.stdout.splitlines() if line.strip())
        if not files:
            raise UsageError(f"--patch {patch_path}: the patch changes no file")
        others = [f for f in files if f != codestatic.MODEL_PATH]
        if others:
            return living, files  # the gate's scope stage refuses it and says which files
        done = _git(["apply", "--whitespace=nowarn", str(patch)], work)
        if done.returncode != 0:
            raise UsageError(f"--patch {patch_path} does not apply to models/model.py: {_first(done.stderr)}")
        return (work / codestatic.MODEL_PATH).read_text(encoding="utf-8"), files
    finally:
        shutil.rmtree(work, ignore_errors=True)


def patch_reason(patch_text: str, fallback: str) -> str:
    """The patch's own description (a `git format-patch` message, or text before the diff), else `fallback`."""
    head = re.split(r"^(?:diff --git |--- |Index: )", patch_text, maxsplit=1, flags=re.M)[0]
    lines = []
    for line in head.splitlines():
        if re.match(r"^(From [0-9a-f]{40}|From:|Date:|---$| \S+ \| \d+| \d+ files? changed)", line):
            continue
        lines.append(line.removeprefix("Subject: ").removeprefix("[PATCH] "))
    text = " ".join(" ".join(lines).split())
    return text or fallback


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)


def _first(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "no detail")[:300]


# --- settings of a change: which --set values name new fields ------------------------------

def split_sets(sets: list[tuple[str, Any]], living_fields: dict, new_fields: list[str]) -> tuple[list, dict[str, Any]]:
    """(the --set items the living config takes, {new field: value} for the candidate's own)."""
    kept, new = [], {}
    for key, value in sets:
        name = key.removeprefix("model.")
        if name in new_fields and name not in living_fields and (key == name or key.startswith("model.")):
            new[name] = value
        else:
            kept.append((key, value))
    return kept, new


def gate_patch(lab: Lab, patch_path: Path, base_model: dict[str, Any], model_sets: dict[str, Any],
               fallback_reason: str) -> Candidate:
    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    text, files = apply_patch(living, patch_path)
    reason = patch_reason(patch_path.read_text(encoding="utf-8", errors="replace"), fallback_reason)
    reasons = [(1, 10**9, reason)]
    report = validate(living, text, change=None, reasons=reasons, base_model=base_model, model_sets=model_sets,
                      lab_checks=committed_checks(lab), files=files)
    return Candidate(living, text, report, "patch", None, [{"round": 1, "source": "patch", "file": str(patch_path),
                                                             "stages": report.stages}], reasons)


def new_fields_of(lab: Lab, candidate_text: str) -> list[str]:
    import ast

    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    try:
        return codestatic.new_config_fields(ast.parse(living), ast.parse(candidate_text))
    except SyntaxError:
        return []


def committed_checks(lab: Lab) -> Optional[str]:
    """The lab's checks.py as committed (git HEAD), else as on disk; None when it has none.
    The agent never writes this file: it edits only a scratch copy of models/model.py."""
    from lifecycle.document import gitops
    from lifecycle.knowledge.checks import LAB_CHECKS_FILE

    committed = gitops.file_at_head(lab.root, LAB_CHECKS_FILE)
    if committed is not None:
        return committed
    path = lab.root / LAB_CHECKS_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


# --- what the human sees, and approval ------------------------------------------------------

def approval_lines(candidate: Candidate) -> list[str]:
    report = candidate.report
    out = [f"Code change to models/model.py ({candidate.source}), candidate sha256 {report.sha256}:"]
    for number, hunk in enumerate(report.hunks, 1):
        out.append(f"  hunk {number} (line {hunk['new_start']}): " + " / ".join(hunk["reasons"] or ["NO REASON"]))
        out += [f"    {line}" for line in hunk["hunk"].rstrip("\n").splitlines()]
    out.append("  touched: " + (", ".join(report.touched) or "no definition"))
    if candidate.change is not None:
        settings = [f"{s['name']} ({s['type']}, default {s['default']!r}): {s['meaning']}" for s in candidate.change.new_settings]
        out.append("  new settings: " + ("; ".join(settings) or "none"))
        out.append(f"  changes the default behaviour: {'yes (declared)' if candidate.change.changes_default else 'no'}")
    else:
        out.append("  new settings: " + (", ".join(report.new_settings) or "none"))
    for row in candidate.rounds:
        if row.get("kind") == "rejection":
            out.append(f"  round {row['round']}: you rejected candidate {str(row.get('rejected_sha256'))[:12]} "
                       f"with the note: {row['note']}")
    out.append("  stages:")
    for stage in report.stages:
        mark = {"passed": "✓", "failed": "✗"}.get(stage["status"], "–")
        out.append(f"    {mark} {stage['stage']}: {stage['detail']}")
    if report.isolation:
        iso = report.isolation
        out.append(f"  isolation: network {iso['network']}; {iso['processes']}; {iso['process_group']}; "
                   f"environment {iso['environment']}")
    return out


def approve(candidate: Candidate, approve_code: Optional[str], confirm: Optional[Callable[[list[str]], bool]],
            lab: Lab, version: str) -> dict[str, Any]:
    """The approval of exactly these bytes, or GateRefused (the candidate kept in runs/.pending/V)."""
    lines = approval_lines(candidate)
    if not candidate.report.ok:
        raise GateRefused(f"the code change was refused: {candidate.report.refusal()}\n" + "\n".join(lines))
    sha = candidate.sha256
    if approve_code is not None:
        given = approve_code.strip().lower()
        if len(given) < MIN_SHA_PREFIX or not re.fullmatch(r"[0-9a-f]+", given):
            raise UsageError(f"--approve-code needs at least {MIN_SHA_PREFIX} hex digits of the candidate's sha256")
        if not sha.startswith(given):
            keep_pending(lab, version, candidate)
            raise GateRefused(f"--approve-code {given} does not match the candidate's sha256 {sha}: the code shown "
                              "below is not the code you approved; nothing was changed\n" + "\n".join(lines))
        how = "--approve-code"
    elif confirm is not None and confirm(lines):
        how = "interactive"
    else:
        where = keep_pending(lab, version, candidate)
        raise GateRefused("the code change needs your approval before anything launches (--yes never approves code): "
                          f"review it and run the command again with --approve-code {sha[:12]}"
                          + (" (or with --reject-code NOTE: one more agent round with your note)"
                             if candidate.source == "agent" else "") + "; the candidate is kept in "
                          f"{where.relative_to(lab.root)}\n" + "\n".join(lines))
    return {"sha256": sha, "by": _who(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "how": how}


def _who() -> str:
    from lifecycle.document import gitops

    try:
        actor = gitops.actor()
        return f"{actor.name} <{actor.email}>"
    except Exception:  # noqa: BLE001 - who approved is recorded as best known, never blocks approval
        return getpass.getuser()


def keep_pending(lab: Lab, version: str, candidate: Candidate) -> Path:
    where = lab.runs_dir / PENDING_DIR / version
    where.mkdir(parents=True, exist_ok=True)
    write_text(where / "model.py", candidate.text)
    write_text(where / PATCH_FILE, candidate.report.diff)
    write_json(where / CODE_CHANGE_FILE, record_of(candidate, None))  # last: read_pending checks it against model.py
    return where


# --- install, record, launch check, undo ----------------------------------------------------

def install(lab: Lab, candidate: Candidate) -> Callable[[], None]:
    """Write the approved candidate as the living model file; returns what restores the old one."""
    living = lab.models_dir / "model.py"
    before = living.read_bytes()
    if before.decode("utf-8") != candidate.base:
        raise GateRefused("models/model.py changed while the code change was being validated; run new again")
    write_text(living, candidate.text)

    def restore() -> None:
        from minimind.atomic import write_bytes

        write_bytes(living, before)

    return restore


def record_of(candidate: Candidate, approval: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {"source": candidate.source, "change": candidate.change.to_dict() if candidate.change else None,
            "sha256": candidate.sha256, "base_sha256": _sha(candidate.base), "rounds": candidate.rounds,
            "hunks": candidate.report.hunks, "stages": candidate.report.stages, "touched": candidate.report.touched,
            "new_settings": candidate.report.new_settings, "isolation": candidate.report.isolation,
            "seconds": candidate.report.seconds, "plan_config": candidate.report.plan_config, "approval": approval}


def write_files(run_dir: Path, candidate: Candidate, approval: dict[str, Any]) -> None:
    write_json(run_dir / CODE_CHANGE_FILE, record_of(candidate, approval))
    write_text(run_dir / PATCH_FILE, candidate.report.diff)


def verify_at_launch(lab: Lab, version: str) -> None:
    """The snapshot that will run is the code the human approved (for a code experiment)."""
    from minimind.rundir import read_json
    from models.registry import sha256_file

    record = read_json(lab.run_dir(version) / CODE_CHANGE_FILE)
    if not record or not record.get("approval"):
        return
    snapshot = lab.snapshot_path(version)
    actual = sha256_file(snapshot) if snapshot.is_file() else "missing"
    approved = record["approval"]["sha256"]
    if actual != approved:
        raise GateRefused(f"models/{snapshot.name} (sha256 {actual[:12]}) is not the code approved for {version} "
                          f"(sha256 {approved[:12]}): it changed after approval; nothing was launched")


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def undo(lab: Lab, version: str) -> str:
    """Reverse-apply runs/V/model.patch to the living models/model.py, or refuse saying why."""
    patch = lab.require_run(version) / PATCH_FILE
    if not patch.is_file():
        raise MinimindError(f"experiment {version} has no code change (no runs/{version}/{PATCH_FILE})")
    living = lab.models_dir / "model.py"
    work = Path(tempfile.mkdtemp(prefix="minimind-undo-"))
    try:
        (work / "models").mkdir()
        shutil.copyfile(living, work / codestatic.MODEL_PATH)
        done = _git(["apply", "-R", "--whitespace=nowarn", str(patch.resolve())], work)
        if done.returncode != 0:
            raise MinimindError(f"cannot undo {version}'s code change: models/model.py has changed since in the lines "
                                f"the change touched, and the reverse patch does not apply ({_first(done.stderr)}); "
                                f"edit models/model.py by hand, using runs/{version}/{PATCH_FILE}")
        text = (work / codestatic.MODEL_PATH).read_text(encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_text(living, text)
    return (f"Undid experiment {version}'s code change in models/model.py ({codestatic.changed_line_count(patch.read_text(encoding='utf-8'))} "
            f"changed lines reversed); models/{Path(lab.snapshot_path(version)).name} keeps the code it ran")


# --- `new --patch`: the gate and the approval before anything else of `new` -----------------

def run_with_code_change(lab: Lab, req: Any, create: Callable[..., Any]) -> Any:
    """`new` with a human's patch: gate it, have it approved, install it, then create the
    experiment as usual (`create(lab, req, _code=...)`); the living file is restored if that fails."""
    from lifecycle.knowledge.bases import base_config, check_existing, finished_base, parse_sets
    from models.registry import model_schema, validate_model
    from minimind.config import apply_sets, resolve_key
    from minimind.versions import parse

    parse(req.version)
    check_existing(lab, req.version)
    if req.from_proposal:
        raise UsageError("--patch and --from-proposal cannot be combined")
    settings = lab.settings()
    base = req.base or finished_base(lab, req.version)  # the base `new` itself will take
    if req.base is not None and not (lab.run_dir(req.base) / "config.yaml").exists():
        raise UsageError(f"base experiment {req.base} does not exist")
    patch_path = Path(req.patch)
    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    text, _ = apply_patch(living, patch_path)
    model_cls, living_fields = model_schema(lab)
    new_fields = new_fields_of(lab, text)
    # the candidate's own settings parse like the living ones (their types are checked in the child)
    fields = {**{name: {} for name in new_fields}, **living_fields}
    kept, model_sets = split_sets(parse_sets(req.sets, fields), living_fields, new_fields)
    for key, _ in kept:
        resolve_key(key, living_fields)
    start = apply_sets(base_config(lab, settings, base, model_cls), kept, living_fields)
    base_model = validate_model(model_cls, start["model"])
    print("[code] validating the patch (static stages, then the checks, the effect and a smoke in a child process)",
          flush=True)
    candidate = gate_patch(lab, patch_path, base_model, model_sets, req.goal or "the human's patch")
    approval = approve(candidate, req.approve_code, req.confirm_code, lab, req.version)
    restore = install(lab, candidate)
    try:
        result = create(lab, req, _code=(candidate, approval))
    except BaseException:
        restore()
        raise
    shutil.rmtree(lab.runs_dir / PENDING_DIR / req.version, ignore_errors=True)
    result.messages[1:1] = [f"  code:     models/model.py changed ({len(candidate.report.hunks)} hunk(s)), approved "
                            f"{approval['how']} sha256 {approval['sha256'][:12]}; runs/{req.version}/{PATCH_FILE}, "
                            f"undo with: minimind undo-code {req.version}"]
    return result


def gate_checks(candidate: Candidate) -> list[dict[str, Any]]:
    """The preflight check results the gate's child produced on the candidate (the record's table)."""
    stage = next((s for s in candidate.report.stages if s["stage"] == "checks"), None)
    return list(stage.get("items", [])) if stage else []


# --- the agent's code change: `new` with a plan that declares code_change -------------------

def implement_step(lab: Lab, req: Any, cfg: Any, plan_record: dict[str, Any], log_dir: Path,
                   agent_settings: Any) -> tuple[tuple[Candidate, dict[str, Any]], Any, Callable[[], None]]:
    """Implement the plan's code change (claude), gate it, have it approved, install it.

    Returns ((candidate, approval), the config with the candidate's model settings, restore).
    With --approve-code matching the candidate kept from an earlier attempt of this version,
    that candidate is used and the agent is not asked to write the code again."""
    from agent.base import AgentError
    from agent.calllog import failed_attempt_logs
    from agent.implement import ImplementContext, implement
    from lifecycle.knowledge import lessons
    from minimind.config import from_dict

    change = CodeChange.from_dict(plan_record["code_change"])
    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    model_sets = {k.removeprefix("model."): v for k, v in plan_record.get("code_sets", {}).items()}
    checks_text = committed_checks(lab)

    def gate(text: str, reasons: list[tuple[int, int, str]]):  # change and model_sets: a revision's are the kept ones
        report = validate(living, text, change=change, reasons=reasons, base_model=cfg.model, model_sets=model_sets,
                          lab_checks=checks_text)
        return report.ok, report.refusal(), report

    candidate = _pending_match(lab, req, living, change) if req.approve_code else None
    if candidate is None:
        if plan_record.get("backend") != "claude":
            raise MinimindError("the plan declares a code change, which only the claude backend implements; "
                                "write it as a patch and use --patch")
        from agent.claude import ClaudeAgent

        agent = ClaudeAgent(agent_settings, log_dir, prior_logs=failed_attempt_logs(lab.runs_dir, req.version))
        ctx = ImplementContext(version=req.version, goal=req.goal, hypothesis=req.hypothesis,
                               code_change=change.to_dict(), base_text=living,
                               lessons="\n".join(lessons.lines(lab) or []))
        earlier: list[dict[str, Any]] = []
        if req.reject_code is not None:  # one more round over the kept candidate, with the human's note
            ctx, earlier, change, model_sets = _revision(lab, req, living, ctx, model_sets)
            print(f"[agent] revising the rejected code change with your note (round {ctx.revision.first_round})",
                  flush=True)
        else:
            print("[agent] implementing the plan's code change (text editor tool over a scratch copy)", flush=True)
        try:
            result = implement(agent, ctx, gate)
        except AgentError as exc:  # the rounds are in the call log's folder, kept in runs/.failed/ by `new`
            kept = (f"; the candidate kept in runs/{PENDING_DIR}/{req.version} is unchanged and still waits for "
                    "approval" if req.reject_code is not None else "")
            raise MinimindError(f"{exc}; models/model.py is unchanged and the rounds are kept in runs/.failed/{kept}") \
                from None
        candidate = Candidate(living, result.text, result.report, "agent", change, earlier + result.rounds,
                              result.reasons)
    approval = approve(candidate, req.approve_code, req.confirm_code, lab, req.version)
    restore = install(lab, candidate)
    cfg = from_dict({**cfg.to_dict(), "model": candidate.report.plan_config}, where="resolved config")
    return (candidate, approval), cfg, restore


def read_pending(lab: Lab, version: str) -> Optional[tuple[dict[str, Any], str]]:
    """(the record, the candidate's text) of the agent's candidate of `version` waiting for approval, or None."""
    from minimind.rundir import read_json

    where = lab.runs_dir / PENDING_DIR / version
    data = read_json(where / CODE_CHANGE_FILE)
    if not data or data.get("source") != "agent" or not (where / "model.py").is_file():
        return None
    text = (where / "model.py").read_text(encoding="utf-8")
    if _sha(text) != data.get("sha256"):  # a write cut short between the two files: the record is not of this code
        return None
    return data, text


def check_rejection(lab: Lab, req: Any, requested: str) -> None:
    """`--reject-code NOTE` before anything runs: a note, the agent's candidate waiting, claude to revise it."""
    from agent.backends import resolve_name

    where = f"runs/{PENDING_DIR}/{req.version}"
    if req.patch:
        raise UsageError("--reject-code sends a note to the agent that wrote the candidate; a --patch is yours: "
                         "change the patch and run new again")
    if req.approve_code:
        raise UsageError("--reject-code and --approve-code cannot be combined: reject the candidate or approve it")
    if not (req.reject_code or "").strip():
        raise UsageError("--reject-code needs a note: what the agent should change in the candidate")
    if read_pending(lab, req.version) is None:
        raise UsageError(f"no code change written by the agent waits for approval for {req.version} ({where}): "
                         "nothing to reject")
    if resolve_name(requested) != "claude":
        raise UsageError(f"the {resolve_name(requested)} backend cannot revise code: --reject-code needs the claude "
                         f"backend (ANTHROPIC_API_KEY, --agent claude); the candidate in {where} is kept as it was")


def _revision(lab: Lab, req: Any, living: str, ctx: Any, model_sets: dict[str, Any]):
    """The implement context for one more round over the kept candidate, with the human's note;
    (context, the earlier rounds with this rejection, the candidate's declared change, its settings)."""
    from agent.implement import Revision

    data, text = read_pending(lab, req.version) or ({}, "")
    if not data or data.get("base_sha256") != _sha(living):
        raise GateRefused(f"the candidate kept in runs/{PENDING_DIR}/{req.version} was written against another "
                          "models/model.py; run new again without --reject-code to have it rewritten")
    diff = codestatic.unified_diff(living, text)
    kept_reasons = [(first, last, " / ".join(h.get("reasons") or []))
                    for (first, last), h in zip(codestatic.changed_ranges(diff), data.get("hunks", []))]
    rounds = list(data.get("rounds", []))
    number = max([r.get("round", 0) for r in rounds] + [0]) + 1
    note = " ".join(req.reject_code.split())
    rounds.append({"round": number, "kind": "rejection", "note": note, "by": _who(),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rejected_sha256": data.get("sha256")})
    change = CodeChange.from_dict(data["change"]) if data.get("change") else CodeChange.from_dict(ctx.code_change)
    if not model_sets:  # the plan asked again left the new settings out: the candidate's own stand
        plan_config = data.get("plan_config") or {}
        model_sets = {k: plan_config[k] for k in data.get("new_settings", []) if k in plan_config}
    ctx.code_change = change.to_dict()
    ctx.revision = Revision(text=text, note=note, diff=diff, reasons=kept_reasons, first_round=number + 1)
    return ctx, rounds, change, model_sets


def _pending_match(lab: Lab, req: Any, living: str, change: CodeChange) -> Optional[Candidate]:
    """The candidate kept in runs/.pending/V when --approve-code names it and it still applies."""
    kept = read_pending(lab, req.version)
    if kept is None or not str(kept[0].get("sha256", "")).startswith(req.approve_code.lower()):
        return None
    data, text = kept
    if data.get("base_sha256") != _sha(living):
        raise GateRefused(f"the candidate kept in runs/{PENDING_DIR}/{req.version} was written against another "
                          "models/model.py; run new again without --approve-code to have it rewritten")
    report = GateReport(data["stages"], codestatic.unified_diff(living, text), data["hunks"], data["sha256"],
                        data.get("isolation"), data.get("plan_config"), new_settings=data.get("new_settings", []),
                        touched=data.get("touched", []))
    return Candidate(living, text, report, "agent", CodeChange.from_dict(data["change"]) if data.get("change") else change,
                     data.get("rounds", []))
