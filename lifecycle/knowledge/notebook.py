"""The lab notebook: `experiment/INDEX.md`, the rows `minimind history [--json]` shows, and the trace the agent reads.

One row per experiment, read from its run directory (plan.json, analysis.json, eval.json,
next.json, state): version, base, goal, hypothesis, the change in one line, state, verdict
with its interval, inference loss, val loss, recall P@1 per split (with the 95%
interval), guardrail dangers, next step. INDEX.md is regenerated after every analysis and
before every commit, and committed with each experiment. The reviewer's notes are the
`## Reviewer notes` section a human may write in a record (a section code does not own, so
lifecycle/document/record.py's merge keeps it across re-renders).
"""

from __future__ import annotations

from typing import Any, Optional

from minimind.atomic import write_text
from minimind.formats import interval, number
from minimind.guardrails import upgrade_eval
from minimind.rundir import ANALYSIS_FILE, EVAL_FILE, NEXT_FILE, PLAN_FILE, current, read_json

INDEX_FILE = "INDEX.md"
NOTES_HEADING = "## Reviewer notes"
NOTES_HEADING_ZH = "## 审阅者笔记"


def _ci(ci: Any) -> str:
    return f" {interval(ci)}" if interval(ci) else ""


def reviewer_notes(text: str) -> str:
    """The body of a record's `## Reviewer notes` (or 审阅者笔记) section, '' when absent."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line.strip() in (NOTES_HEADING, NOTES_HEADING_ZH)
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines).strip()


def _change(plan: dict) -> str:
    parts = [f"{c['key'].split('.', 1)[-1]} {c.get('base')!r}→{c.get('new')!r}" for c in plan.get("changes") or []]
    if plan.get("model_changed"):
        parts.append("models/model.py changed")
    return ", ".join(parts) or "no change"


def _interval(analysis: dict, ev: dict) -> str:
    """The verdict's interval: the analysis's own when it has one, else the one its reason states,
    else the key metric's from eval.json."""
    info = analysis.get("verdict_info") or {}
    for key in ("interval", "ci"):
        if isinstance(info.get(key), (list, str)):
            return info[key] if isinstance(info[key], str) else _ci(info[key]).strip()
    # The verdict's reason names the metric it was decided on with its interval (for an SFT run
    # that is chat QA, not inference loss): shown as it is, so the row cannot cite another metric.
    reason = (info.get("reason") or "").split(" (criteria")[0]
    if "CI [" in reason:
        return f"({reason})"
    for metric in ("inference_loss", "val_loss"):
        ci = ev.get(f"{metric}_ci")
        if ci:
            return f"{metric}{_ci(ci)}"
    # Otherwise the paired interval of the key metric's change against the base (minimind.verdict).
    for r in analysis.get("comparison") or []:
        ci = r.get("ci")
        if r.get("metric") == "inference_loss" and isinstance(ci, dict) and None not in (ci.get("low"), ci.get("high")):
            level = ci.get("confidence", info.get("confidence"))
            return (f"(Δ inference loss [{ci['low']:+.3g}, {ci['high']:+.3g}]"
                    + (f" at {level:.0%})" if isinstance(level, float) else ")"))
    reason = (info.get("reason") or "").split(" (criteria")[0]
    return f"({reason})" if reason else ""


def row(lab, version: str) -> dict[str, Any]:
    run_dir = lab.run_dir(version)
    plan = read_json(run_dir / PLAN_FILE) or {}
    analysis = read_json(run_dir / ANALYSIS_FILE) or {}
    ev = upgrade_eval(read_json(run_dir / EVAL_FILE)) or {}
    proposal = read_json(run_dir / NEXT_FILE) or {}
    derived, state = current(run_dir)
    verdict = (analysis.get("verdict_info") or {}).get("verdict")
    recall = {split: {"p_at_1": r.get("p_at_1"), "ci": r.get("p_at_1_ci"), "n": r.get("n")}
              for split, r in (ev.get("recall") or {}).items()}
    dangers = sorted(n for n, g in (ev.get("guardrails") or {}).items() if g.get("level") == "danger")
    next_steps = analysis.get("next_steps") or []
    record = lab.record_path(version)
    notes = reviewer_notes(record.read_text(encoding="utf-8")) if record.exists() else ""
    return {
        "version": version, "base": plan.get("base", state.base), "goal": plan.get("goal", ""),
        "hypothesis": plan.get("hypothesis", ""), "change": _change(plan), "state": derived,
        "verdict": verdict, "verdict_reason": (analysis.get("verdict_info") or {}).get("reason"),
        "interval": _interval(analysis, ev) if verdict else "",
        "inference_loss": ev.get("inference_loss"), "val_loss": ev.get("val_loss"), "recall": recall,
        "dangers": dangers, "next_step": proposal.get("goal") or (next_steps[0] if next_steps else ""),
        "reviewed": state.reviewed, "committed": state.committed, "reviewer_notes": notes,
    }


def rows(lab, versions: Optional[list[str]] = None) -> list[dict[str, Any]]:
    return [row(lab, v) for v in lab.versions() if versions is None or v in versions]


def cell(text: Any, limit: int = 0) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if not limit or len(text) <= limit else text[: limit - 1] + "…"


def recall_text(r: dict) -> str:
    return "; ".join(f"{split} {number(v['p_at_1'])}{_ci(v['ci'])}" for split, v in r["recall"].items()) or "—"


def index_text(lab, versions: Optional[list[str]] = None) -> str:
    """The notebook of `versions` (all experiments when None)."""
    table = ["| version | base | goal | hypothesis | change | state | verdict | inference loss | val loss | "
             "recall P@1 | dangers | next step |", "|" + "---|" * 12]
    listed = rows(lab, versions)
    for r in listed:
        verdict = f"{r['verdict']}{' ' + r['interval'] if r['interval'] else ''}" if r["verdict"] else "—"
        table.append("| " + " | ".join([
            f"[{r['version']}](experiment_{r['version']}.md)", r["base"] or "—", cell(r["goal"], 80),
            cell(r["hypothesis"], 100), cell(r["change"], 80), r["state"], cell(verdict),
            number(r["inference_loss"]), number(r["val_loss"]), cell(recall_text(r)), ", ".join(r["dangers"]) or "none",
            cell(r["next_step"], 100)]) + " |")
    notes = [f"- **{r['version']}:** {cell(r['reviewer_notes'], 400)}" for r in listed if r["reviewer_notes"]]
    noise = "\n## Run-to-run noise\n\nThe seed-to-seed spread per metric, pooled over the replicated experiments " \
            "named; a verdict with a single-run side uses it.\n\n" + "\n".join(f"- {line}" for line in noise_lines(lab)) + "\n"
    return ("# Lab notebook\n\nEvery experiment of this lab, regenerated by minimind after each analysis and commit "
            "(`minimind history` prints the same). Lessons: [LESSONS.md](LESSONS.md).\n\n" + "\n".join(table) + "\n"
            + noise + ("\n## Reviewer notes\n\n" + "\n".join(notes) + "\n" if notes else ""))


def noise_rows(lab) -> list[dict[str, Any]]:
    """The lab's measured run-to-run noise: per metric, the pooled seed-to-seed spread and the
    replicated experiments it rests on (lifecycle/knowledge/replicates.py). [] when none is replicated."""
    from lifecycle.knowledge.replicates import lab_floors

    return [f.to_dict() for _, f in sorted(lab_floors(lab).items())]


NOISE_METRICS = ("inference_loss", "val_loss", "repetition_rate")  # shown first; recall and the rest follow


def noise_lines(lab) -> list[str]:
    """One line per metric: 'inference_loss: seed sd 0.012 over 0.1.0, 0.1.1 (4 df)'; or how to measure it."""
    found = noise_rows(lab)
    if not found:
        return ["Run-to-run noise: unmeasured (no experiment has 2 or more replicates); measure it with "
                "`minimind replicate BASE --seeds 3`. Until then a change under eval.min_effect (1%) counts as noise."]
    order = sorted(found, key=lambda f: (f["metric"] not in NOISE_METRICS, f["metric"]))
    return [f"{f['metric']}: seed-to-seed sd {f['sd']:.4g} over {', '.join(f['experiments'])} ({f['df']} df)"
            for f in order]


def write_index(lab, versions: Optional[list[str]] = None) -> None:
    lab.experiment_dir.mkdir(parents=True, exist_ok=True)
    write_text(lab.experiment_dir / INDEX_FILE, index_text(lab, versions))


def trace(lab, exclude: Optional[str] = None, limit: int = 30) -> str:
    """The compact notebook the agent reads: one line per experiment, then the reviewer's notes."""
    lines, notes = [], []
    for r in rows(lab)[-limit:]:
        if r["version"] == exclude:
            continue
        verdict = f"{r['verdict']}{' ' + r['interval'] if r['interval'] else ''}" if r["verdict"] else r["state"]
        lines.append(f"- {r['version']} (base {r['base'] or 'none'}): {cell(r['goal'], 120)} | change: {cell(r['change'], 120)} "
                     f"| {verdict} | inference loss {number(r['inference_loss'])}, val loss {number(r['val_loss'])}, recall {recall_text(r)}"
                     + (f" | dangers: {', '.join(r['dangers'])}" if r["dangers"] else ""))
        if r["reviewer_notes"]:
            notes.append(f"- {r['version']}: {cell(r['reviewer_notes'], 600)}")
    return "\n".join(lines + (["Reviewer notes:"] + notes if notes else []) + ["Run-to-run noise:"]
                     + [f"- {line}" for line in noise_lines(lab)])
