"""The experiment record: its context is built from the run's files, then rendered.

Everything the record shows is read from `runs/V/` (config.yaml, state.json, plan.json,
analysis.json, eval.json, metrics.jsonl, model.diff), so it can be re-rendered at any
stage and always agrees with the files. A record the human has edited since it was last
rendered is never overwritten: the new render goes beside it as `runs/V/record.rendered.md`.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

from lifecycle.document.render import PENDING_MARK, render
from minimind.atomic import write_text
from minimind.config import flatten, load_config
from minimind.formats import MODEL_DIFF_CHARS, interval
from minimind.lab import Lab
from minimind.phrases import phrase
from minimind.phrases import has as has_phrase
from minimind.guardrails import LIGHTS, upgrade_eval
from minimind.schema import to_dict
from minimind.rundir import (ANALYSIS_FILE, CODE_CHANGE_FILE, CONFIG_FILE, DIFF_FILE, EVAL_FILE, LESSON_FILE, METRICS_FILE, NEXT_FILE,
                             PLAN_FILE, SEEDS_FILE,
                             RECORD_LAST_FILE, RECORD_MARK_FILE, RENDERED_RECORD_FILE, current, read_json,
                             read_metrics)


# The lab's record sections, in order (PRODUCT.md section 5), by id: the one owner of which
# sections a record has. Each heading is the phrasebook's `section.<id>` in the record's
# language; review and the re-render find a section by its id (`section_of`), never by position.
SECTION_IDS = ("thinking", "git", "basic", "config", "execution", "training", "evaluation", "analysis", "conclusion")
# The sections code re-renders from the run's files after the plan: a human edit elsewhere
# is always kept; an edit inside one of these blocks the merge.
OWNED_IDS = ("execution", "training", "evaluation", "analysis", "conclusion")


def heading(section_id: str, lang: str) -> str:
    """A section's heading text (after '## ') in the record's language."""
    return phrase(f"section.{section_id}", lang)


def headings(lang: str, ids: tuple[str, ...] = SECTION_IDS) -> list[str]:
    return [heading(i, lang) for i in ids]

KEY_PARAMS = ("model.preset", "model.dim", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.vocab_size",
              "model.max_seq_len", "model.knowledge_num", "model.knowledge_length", "model.knowledge_dim",
              "model.num_candidates", "model.freeze_ratio", "model.freeze_policy", "model.ema_decay",
              "model.ema_update_freq", "train.epochs", "train.batch_size", "train.accumulation_steps",
              "train.learning_rate", "train.max_steps", "train.seed", "launch.num_processes", "launch.mixed_precision")
# Settings only a model with a memory layer reads: a dense run's table leaves them out.
MEMORY_PARAMS = ("model.knowledge_num", "model.knowledge_length", "model.knowledge_dim", "model.num_candidates",
                 "model.freeze_ratio", "model.freeze_policy", "model.ema_decay", "model.ema_update_freq")
# Runs made by minimind <= 0.1.x have no plan.json `has_memory` (`new` records it from the
# model module's registry, models/registry.py memory_presets): for them, the presets with a
# memory layer as that version knew them (models/model.py PRESETS, with the seed lab's aliases).
# tests/test_record_text.py checks them against PRESETS.
MEMORY_PRESETS = ("memory", "hybrid", "model_memory", "model")


def has_memory(model: dict, plan: Optional[dict] = None) -> bool:
    """Whether the run's model has a memory bank: what `new` recorded in plan.json, else the
    fallback for older runs."""
    if plan and isinstance(plan.get("has_memory"), bool):
        return plan["has_memory"]
    return model.get("preset") in MEMORY_PRESETS


# The trainer's words for what a run computes on (training/loop.py resources), for a zh record.
_RESOURCES = re.compile(r"^(\d+) process\(es\)(?: on (\w+))?, mixed precision (\w+)"
                        r"(?:, micro-batch (\d+) x accumulation (\d+))?( \(split by the memory plan\))?(, DeepSpeed)?$")


def resources_in(text: str, lang: str) -> str:
    """state.json `resources` (the trainer's English words) in the record's language, from the
    phrasebook's `resources` group; a sentence of another form is shown as written."""
    m = _RESOURCES.match(text)
    if not m:
        return text
    procs, device, precision, batch, accumulation, split, deepspeed = m.groups()
    say = lambda key, **values: phrase(f"resources.{key}", lang, **values)  # noqa: E731
    return (say("procs", n=procs) + (say("device", device=device) if device else "") + say("precision", precision=precision)
            + (say("batch", batch=batch, accumulation=accumulation) if batch else "") + (say("split") if split else "")
            + (say("deepspeed") if deepspeed else ""))


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _iso(ts: Optional[float]) -> Optional[str]:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else None


def metrics_summary(rows: list[dict], window: int = 50) -> dict[str, Any]:
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float)) and "step" in r]
    train_rows = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    if not losses:
        return {"steps": 0}
    tps = [r["tokens_per_s"] for r in train_rows if isinstance(r.get("tokens_per_s"), (int, float))]
    ce = [r.get("loss_ce", r["loss"]) for r in train_rows]
    # The trainer's own clock (elapsed_s, kept across resumes) counts from the first step; the
    # rows' wall times start at the first log, a whole log interval later. Older rows lack it.
    elapsed = [r["elapsed_s"] for r in train_rows if isinstance(r.get("elapsed_s"), (int, float))]
    start = train_rows[0].get("time")
    end = train_rows[-1].get("time")
    return {
        "steps": int(train_rows[-1].get("step", len(train_rows))),
        "first_loss": losses[0], "last_loss": losses[-1], "min_loss": min(losses),
        "smoothed_loss": sum(ce[-window:]) / len(ce[-window:]),
        "tokens_per_s": sum(tps[-10:]) / len(tps[-10:]) if tps else None,
        "duration": _duration(max(elapsed)) if elapsed else (_duration(end - start) if start and end else "—"),
    }


def _level(guardrail: dict, lang: str) -> str:
    """A guardrail's level as the record's table shows it; a level the book does not know as written."""
    level = guardrail.get("level", "n/a")
    return phrase(f"record_level.{level}", lang) if has_phrase(f"record_level.{level}") else guardrail.get("level")


def record_context(lab: Lab, version: str, run_dir: Optional[Path] = None) -> dict[str, Any]:
    """Everything the record template shows, from the run directory's files."""
    run_dir = run_dir or lab.run_dir(version)
    cfg = load_config(run_dir / CONFIG_FILE)
    derived, state = current(run_dir)
    if derived == "running" and state.train_outcome:
        # The pipeline is still alive (evaluating, analysing) but training has ended.
        derived = state.train_outcome
    plan = read_json(run_dir / PLAN_FILE) or {}
    analysis = read_json(run_dir / ANALYSIS_FILE)
    ev = upgrade_eval(read_json(run_dir / EVAL_FILE))  # an older eval.json's entropy was the candidates'
    base_ev = upgrade_eval(read_json(lab.run_dir(cfg.base) / EVAL_FILE)) if cfg.base else None
    rows = read_metrics(run_dir / METRICS_FILE)
    summary = metrics_summary(rows, cfg.guardrails.smoothing_window)
    diff_text = (run_dir / DIFF_FILE).read_text(encoding="utf-8") if (run_dir / DIFF_FILE).exists() else ""
    flat = flatten(cfg.to_dict())

    from lifecycle.knowledge.replicates import verdict_inputs
    from minimind.verdict import bank_reading, compare_rows, delta_text, held_out_control

    lang = lang_of(plan)
    confidence = cfg.eval.confidence
    comparison = (analysis or {}).get("comparison")
    if not comparison and ev:
        # Before the analysis: the rows analyse will write, from the same inputs (one assembler).
        new_side, base_side, floors = verdict_inputs(lab, run_dir, cfg, ev)
        comparison = compare_rows(new_side, base_side, confidence, cfg.eval.min_effect, floors)
    comparison = comparison or []
    control = (analysis or {}).get("held_out_control") or (held_out_control(ev, base_ev, confidence, lang) if ev else None)
    has_items = bool(ev and ev.get("per_item")) and bool(base_ev is None or base_ev.get("per_item"))
    intervals_note = (phrase("record_intervals.marked", lang, confidence=f"{confidence:.0%}") if has_items else
                      phrase("record_intervals.unmarked", lang)) if base_ev else ""
    if lang == "zh":
        comparison = [{**row, "delta_text": delta_text(row, lang)} for row in comparison]
    guardrails = [{"name": n, "value": g.get("value"), "level": _level(g, lang),
                   "light": LIGHTS.get(g.get("level"), "⚪")} for n, g in ((ev or {}).get("guardrails") or {}).items()]
    recall = []
    for split, r in ((ev or {}).get("recall") or {}).items():
        ci = r.get("p_at_1_ci")
        recall.append({"split": split, "n": r.get("n"), "p_at_1": r.get("p_at_1"), "mrr": r.get("mrr"),
                       "p_ci": interval(ci)})
    chat_qa = []
    for group, q in ((ev or {}).get("chat_qa") or {}).items():
        ci = q.get("accuracy_ci")
        chat_qa.append({"group": group, "n": q.get("n"), "accuracy": q.get("accuracy"),
                        "ci": interval(ci)})
    retrieval = _retrieval_rows(ev)
    reading = (analysis or {}).get("bank_reading") or (bank_reading(ev, confidence, lang) if ev else None)
    started, ended = state.started_at, state.ended_at
    eta = state.eta_s if derived == "running" else None
    resources = state.resources or f"{cfg.launch.num_processes} process(es), mixed precision {cfg.launch.mixed_precision}"
    resources = resources_in(resources, lang)
    return {"r": {
        "version": version, "base": cfg.base, "state": derived, "config_hash": plan.get("config_hash", ""),
        "stage": cfg.stage, "init": to_dict(cfg.init) if cfg.init else None,
        "snapshot": {"module": cfg.model_module, "sha256": state.snapshot.get("sha256", plan.get("snapshot_sha256", ""))},
        "human": {"goal": plan.get("goal", ""), "hypothesis": plan.get("hypothesis", ""), "expect": plan.get("expect"),
                  "base": cfg.base},
        "plan": {"thinking": plan.get("thinking", ""), "changes": plan.get("changes", []), "expected": plan.get("expected", ""),
                 "risks": plan.get("risks", []), "backend": plan.get("backend", "offline"), "note": plan.get("note", "")},
        "git": {"commit": state.git.get("commit") or plan.get("git_commit"),
                "dirty": state.git.get("dirty", plan.get("git_dirty")),
                "diff": diff_text[:MODEL_DIFF_CHARS].rstrip("\n"),
                "diff_truncated": len(diff_text) > MODEL_DIFF_CHARS,
                "model_changed": bool(diff_text.strip()), "against": plan.get("diff_against", "the base snapshot")},
        "model": cfg.model, "train": cfg.train,
        "config_rows": [(k, flat[k]) for k in KEY_PARAMS
                        if k in flat and (k not in MEMORY_PARAMS or has_memory(cfg.model, plan))],
        "has_memory": has_memory(cfg.model, plan),
        "execution": {"launched": bool(state.pid), "pid": state.pid, "pgid": state.pgid,
                      "started_at": _iso(started), "ended_at": _iso(ended),
                      "duration": _duration(ended - started) if started and ended else None,
                      "step": state.step, "total_steps": state.total_steps,
                      "eta": _duration(eta) if eta else None, "stop_reason": state.stop_reason,
                      "resources": resources},
        "training": {"available": summary.get("steps", 0) > 0, **summary},
        "evaluation": {"available": ev is not None, "rows": comparison, "guardrails": guardrails, "recall": recall,
                       "samples": ((ev or {}).get("samples") or [])[:5], "control": control,
                       "intervals_note": intervals_note, "chat_qa": chat_qa,
                       "chat": (ev or {}).get("chat") or {}, "sft_loss": (ev or {}).get("sft_loss"),
                       "chat_samples": ((ev or {}).get("chat_samples") or [])[:6],
                       "retrieval": retrieval, "bank_reading": reading, "selection": selection_view(ev)},
        "analysis_failed": bool(state.analysis_failed) and analysis is None,
        "analysis_error": state.analysis_error or "",
        "eval_prompt_tokens": cfg.eval.prompt_tokens,
        "analysis": {"available": analysis is not None, **(analysis or {}),
                     "notes": list((analysis or {}).get("notes") or []) + list((analysis or {}).get("commit_notes") or [])},
        "preflight": _preflight_view(plan.get("preflight") or {}, lang_of(plan)),
        "estimate_lines": (plan.get("estimate") or {}).get("lines", []),
        "next": read_json(run_dir / NEXT_FILE),
        "code_change": _code_change(run_dir),
        "lesson": read_json(run_dir / LESSON_FILE),
        "verdict": (analysis or {}).get("verdict_info", {"verdict": "", "reason": "", "verdict_zh": ""}),
        "replicates": replicates_view(run_dir),
    }}


REPLICATE_METRICS = ("inference_loss", "val_loss", "repetition_rate", "recall.mem_only.p_at_1")


def replicates_view(run_dir: Path) -> Optional[dict[str, Any]]:
    """A replicated experiment's runs/V/seeds.json for the record: each replicate's numbers, then
    mean and seed-to-seed sd per metric; None for a single run."""
    data = read_json(Path(run_dir) / SEEDS_FILE)
    if not data or len(data.get("replicates") or []) < 2:
        return None
    spread = data.get("spread") or {}
    metrics = [m for m in REPLICATE_METRICS if m in spread]
    rows = [{"seed": rep.get("seed"), "values": [(rep.get("metrics") or {}).get(m) for m in metrics]}
            for rep in data["replicates"]]
    return {"n": len(rows), "metrics": metrics, "rows": rows,
            "mean": [spread[m]["mean"] for m in metrics], "sd": [spread[m]["sd"] for m in metrics]}


def selection_view(ev: Optional[dict]) -> Optional[dict[str, Any]]:
    """The memory-entropy guardrail's measure per layer beside the candidate-softmax entropy,
    for the record: {worst, distinct, candidate, window, max (ln window), layers: [{layer,
    selection, distinct, candidate}]}. None without memory statistics (a model without memory)."""
    memory = (ev or {}).get("memory") or {}
    candidate = (ev or {}).get("memory_candidate_entropy")
    if not memory and candidate is None:
        return None
    layers = sorted({int(k[1:].split("/")[0]) for k in memory if k.startswith("l") and "/" in k})
    window = ev.get("memory_selection_window")
    return {"worst": ev.get("memory_entropy"), "distinct": ev.get("memory_selection_distinct"), "candidate": candidate,
            "window": window, "max": math.log(window) if window else None,
            "layers": [{"layer": i, "selection": memory.get(f"l{i}/selection_entropy"),
                        "distinct": memory.get(f"l{i}/selection_distinct"),
                        "candidate": memory.get(f"l{i}/candidate_entropy")} for i in layers]}


def _preflight_view(preflight: dict, lang: str) -> dict:
    """plan.json's preflight section with the checks' text in the record's language."""
    from lifecycle.knowledge.checks import localized

    view = {"checks": [], "forced": False, "reason": None, "compute_note": None, "compute_accepted": False, **preflight}
    view["checks"] = localized(list(view["checks"] or []), lang)
    return view


def _retrieval_rows(ev: Optional[dict]) -> list[dict[str, Any]]:
    """The retrieval diagnostics table: per bank split, hit@1 and hit@C of the fact's own
    entry and of the shuffled control, with their intervals. Empty without memory."""
    ret = (ev or {}).get("retrieval")
    if not isinstance(ret, dict):
        return []
    out = []
    for split in ("mem_only", "both"):
        r = ret.get(split)
        if not isinstance(r, dict):
            continue
        control = r.get("control") or {}
        out.append({"split": split, "n": r.get("n"), "in_bank": r.get("in_bank"), "c": ret.get("num_candidates"),
                    "hit_at_1": r.get("hit_at_1"), "hit_at_1_ci": interval(r.get("hit_at_1_ci")),
                    "hit_at_c": r.get("hit_at_c"), "hit_at_c_ci": interval(r.get("hit_at_c_ci")),
                    "mean_rank": r.get("mean_rank"),
                    "control_hit_at_1": control.get("hit_at_1"), "control_hit_at_c": control.get("hit_at_c"),
                    "control_hit_at_c_ci": interval(control.get("hit_at_c_ci"))})
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_record(lab: Lab, version: str, lang: str, run_dir: Optional[Path] = None, target: Optional[Path] = None) -> str:
    """Render the record text (does not write)."""
    return render("record.md.j2", record_context(lab, version, run_dir), lab.templates_dir, lang=lang)


def write_record(lab: Lab, version: str, lang: str) -> Path:
    """Re-render the record; a human-edited one is merged (see the module docstring).

    Returns the path written: the record, or `runs/V/record.rendered.md` beside it."""
    run_dir = lab.run_dir(version)
    rendered = text = render_record(lab, version, lang)
    path = lab.record_path(version)
    marker = run_dir / RECORD_MARK_FILE
    last = run_dir / RECORD_LAST_FILE
    if path.exists() and marker.exists():
        current_text = path.read_text(encoding="utf-8")
        if _sha(current_text) != marker.read_text().strip():
            previous = last.read_text(encoding="utf-8") if last.exists() else None
            merged = merge_record(current_text, previous, rendered, lang)
            if merged is None:
                write_text(run_dir / RENDERED_RECORD_FILE, rendered)
                return run_dir / RENDERED_RECORD_FILE
            text = merged
    write_text(path, text)
    write_text(marker, _sha(text))
    write_text(last, rendered)
    (run_dir / RENDERED_RECORD_FILE).unlink(missing_ok=True)
    return path




def _split(text: str) -> list[tuple[str, str]]:
    """[(heading or '' for the part before the first '## ', text including the heading)]."""
    parts: list[tuple[str, str]] = [("", "")]
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            parts.append((line[3:].strip(), line))
        else:
            name, body = parts[-1]
            parts[-1] = (name, body + line)
    return parts


# Records rendered by minimind <= 0.1.x (before PENDING_MARK) are told pending by their
# placeholder prose; only a record without any PENDING_MARK is read this way.
LEGACY_PENDING = re.compile(r"^(Pending|待评估|No training metrics yet|尚无训练指标|Not evaluated yet|尚未评估)", re.M)


def is_pending(body: str, legacy: bool = True) -> bool:
    """Whether a section's body is still the renderer's placeholder. `legacy`: the record holds
    no PENDING_MARK anywhere (an older record), so its placeholder prose is read instead."""
    return PENDING_MARK in body or (legacy and bool(LEGACY_PENDING.search(body)))


def section_of(sections: dict[str, str], section_id: str, lang: str) -> str:
    """A section's body by id from {heading: body} (rules.split_sections, dict(_split(...)));
    '' when the record lacks it."""
    return sections.get(heading(section_id, lang), "")


def merge_record(edited: str, previous: Optional[str], rendered: str, lang: str) -> Optional[str]:
    """The human's record with the owned sections taken from the new render, or None when
    that is not safe (an owned section was edited or removed). Pure.

    `previous` is the record as last rendered (None for runs made before it was kept:
    then only owned sections still showing their placeholder are replaced)."""
    owned = set(headings(lang, OWNED_IDS))
    new_parts = dict(_split(rendered))
    old_parts = dict(_split(previous)) if previous is not None else {}
    out = []
    seen = set()
    for name, body in _split(edited):
        if name in owned:
            seen.add(name)
            untouched = (old_parts.get(name) == body) if previous is not None else (
                is_pending(body.split("\n", 1)[-1].strip(), legacy=PENDING_MARK not in edited) or new_parts.get(name) == body)
            if not untouched:
                return None
            out.append(new_parts.get(name, body))
        elif name == "" and previous is not None and old_parts.get("") == body:
            out.append(new_parts.get("", body))  # the front matter, untouched: its state line follows the run
        else:
            out.append(body)
    if seen != owned & set(new_parts):
        return None  # an owned section was removed: where its results belong is not known
    return "".join(out)


def lang_of(plan: dict) -> str:
    return plan.get("lang", "en")


def code_change_brief(run_dir: Path) -> Optional[dict[str, Any]]:
    """What the analysis and the commit draft see of a code experiment's change (the diff itself
    is model.diff): the summary, each hunk's first line and reasons, the human's rejection notes."""
    data = read_json(run_dir / CODE_CHANGE_FILE)
    if not data:
        return None
    change = data.get("change") or {}
    return {"source": data.get("source"), "summary": change.get("summary"),
            "changes_default": bool(change.get("changes_default")), "new_settings": data.get("new_settings", []),
            "hunks": [{"line": h.get("new_start"), "reasons": h.get("reasons", [])} for h in data.get("hunks", [])],
            "rejection_notes": [r.get("note") for r in data.get("rounds", []) if r.get("kind") == "rejection"],
            "approved_by": (data.get("approval") or {}).get("by")}


def _code_change(run_dir: Path) -> Optional[dict[str, Any]]:
    """A code experiment's change for the record: each hunk with its reasons, the stages, the approval."""
    data = read_json(run_dir / CODE_CHANGE_FILE)
    if not data:
        return None
    return {"source": data.get("source"), "change": data.get("change"), "approval": data.get("approval") or {},
            "hunks": [{"text": h.get("hunk", "").rstrip("\n"), "reasons": h.get("reasons", [])} for h in data.get("hunks", [])],
            "stages": data.get("stages", []), "isolation": data.get("isolation") or {},
            "rounds": sum(1 for r in data.get("rounds", []) if r.get("kind") != "rejection"),
            "rejections": [r for r in data.get("rounds", []) if r.get("kind") == "rejection"],
            "new_settings": data.get("new_settings", []),
            "touched": data.get("touched", [])}
