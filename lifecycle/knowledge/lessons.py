"""The lab's lessons file `experiment/LESSONS.md`: what the agent is told, and how it grows.

The file is seeded from the lab guide's design rules and early-warning table (en and zh),
by `minimind init` and by `new` in a lab that lacks it. Each lesson is a `## ` section
with bullet fields; `**Check:**` names the preflight check that enforces it
(lifecycle/knowledge/checks.py), if any. The file is the source of the lessons in every plan
(`agent.base.lessons_text`); guardrail thresholds are never written into it — they come
from the lab's settings when the lessons are stated.

After an analysis whose data supports a cause (minimind/causes.py: a forced failed
preflight check, a guardrail the change moved into danger, under-training) a lesson naming
that cause is proposed (`runs/V/lesson.json`: text, evidence numbers, cause, experiment);
no cause, no lesson. `review` shows it; `review --approve --accept-lesson` (or the prompt
at a terminal) accepts it into the file, `--reject-lesson` drops it. Approving the record
alone never accepts it: nothing is added without the human's explicit act.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Optional

from minimind import causes as causes_rules
from minimind.atomic import write_json, write_text
from minimind.formats import number
from minimind.rundir import LESSON_FILE, read_json
from minimind.phrases import has as has_phrase
from minimind.phrases import phrase

LESSONS_FILE = "LESSONS.md"

SEED = """\
# Lessons of this lab · 实验室经验

minimind tells the agent every lesson below when it plans or analyses an experiment.
Add lessons by approving a proposed one (`minimind review V --approve`) or by writing a
`## ` section here. Guardrail thresholds are not written here: they come from minimind.yaml.

## Query specificity: the memory query is h_attn
- **Lesson:** The memory query must be the RMS-normed attention output h_attn, never x + h_attn or x. Query specificity matters more than fusion complexity.
- **经验:** 记忆查询必须使用注意力输出 h_attn,禁止 x + h_attn 或 x。查询机制的特异性比融合机制的复杂性更加重要。
- **Evidence:** experiment 1.4.3 used x + h_attn: memory selection froze onto a few entries, train loss reached 0.006 while inference loss was 29.34 (a 4890x gap) and generation was pure repetition.
- **Check:** memory_query
- **Source:** the lab guide, 架构设计防护规则 / 查询机制特异性原则

## Early warning signs of catastrophic overfitting
- **Lesson:** A train loss that falls very low, a large train/inference loss gap, repetitive generations and a low memory selection entropy are the signs of the 1.4.3 failure; the guardrails watch all of them and they outrank any loss improvement.
- **经验:** 训练Loss过低、训练-推理Loss差异过大、生成文本重复率高、记忆选择熵值低是灾难性过拟合的早期预警信号,优先于任何Loss改善。
- **Evidence:** experiment 1.4.3 (train loss 0.006, inference loss 29.34).
- **Check:** none (the guardrails, thresholds in minimind.yaml)
- **Source:** the lab guide, 早期预警信号

## Evaluate autoregressively: the training path is the inference path
- **Lesson:** Judge a model by its KV-cached autoregressive inference loss, not the teacher-forced loss; the full forward and cached decoding must compute the same function.
- **经验:** 定期进行自回归推理评估,防止记忆化学习;训练路径与推理路径必须一致。
- **Check:** train_equals_inference
- **Source:** the lab guide, 训练健康性检查

## No position sees the future
- **Lesson:** A train loss that collapses towards 0 is first suspected of a causality leak.
- **经验:** 训练Loss骤降接近 0 时首先怀疑因果泄漏。
- **Check:** causality
- **Source:** the lab guide, 早期预警信号

## Frozen entries are protected
- **Lesson:** Entries frozen by freeze_ratio never change under EMA updates: they keep the real facts the bank was initialised with.
- **经验:** freeze_ratio 冻结的条目在 EMA 更新中保持不变,保护真实知识。
- **Evidence:** experiment 1.4.7: freezing 20% of the bank with text initialisation improved inference loss 5.5% (2.4699 vs 2.6142).
- **Check:** frozen_entries
- **Source:** the lab guide, experiment 1.4.7
"""

_FIELD = re.compile(r"^- \*\*(?P<name>[^:*]+):\*\*\s*(?P<value>.*)$")


def path_of(lab) -> Path:
    return lab.experiment_dir / LESSONS_FILE


def ensure(lab) -> Optional[Path]:
    """Seed experiment/LESSONS.md where it is missing; returns the path when it was created."""
    path = path_of(lab)
    if path.exists():
        return None
    write_text(path, SEED)
    return path


def parse(text: str) -> list[dict[str, str]]:
    """[{title, Lesson, 经验, Evidence, Check, Source, ...}] from the file's `## ` sections."""
    lessons: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            lessons.append({"title": line[3:].strip()})
        elif lessons and (m := _FIELD.match(line.strip())):
            lessons[-1][m["name"].strip()] = m["value"].strip()
    return [entry for entry in lessons if entry.get("Lesson") or entry.get("经验")]


def load(lab) -> list[dict[str, str]]:
    path = path_of(lab)
    return parse(path.read_text(encoding="utf-8")) if path.exists() else []


def lines(lab, lang: str = "en") -> list[str]:
    """The lessons as the agent is told them; a lab without a lessons file yet (made before they
    existed, or analysed before its next `new` seeds one) is told the seed's."""
    return told(load(lab), lang) if path_of(lab).exists() else seed_lines(lang)


def seed_lines(lang: str = "en") -> list[str]:
    """The lessons every lab starts with, as the agent is told them."""
    return told(parse(SEED), lang)


def told(entries: list[dict[str, str]], lang: str) -> list[str]:
    out = []
    for entry in entries:
        text = entry.get("经验") if lang == "zh" and entry.get("经验") else entry.get("Lesson") or entry.get("经验")
        extra = [f"evidence: {entry['Evidence']}"] if entry.get("Evidence") else []
        check = entry.get("Check", "")
        if check and not check.startswith("none"):
            extra.append(f"enforced by the preflight check {check}")
        out.append(text + (f" ({'; '.join(extra)})" if extra else ""))
    return out


# --- proposals --------------------------------------------------------------------------

def propose(version: str, plan: dict, ev: dict, verdict: str, reason: str, changes: list,
            lang: str = "en", causes: Optional[list[dict[str, Any]]] = None) -> Optional[dict[str, Any]]:
    """A lesson naming the first cause the data supports (minimind/causes.py), with its
    numbers; None when no cause fits (a refuted verdict alone teaches nothing certain).
    Its sentences follow the record's language (`reason` comes in that language already)."""
    if not causes:
        return None
    cause = causes[0]
    say = lambda key, **values: phrase(f"lesson.{key}", lang, **values)  # noqa: E731

    def level(name: Optional[str]) -> Optional[str]:
        return phrase(f"lesson_level.{name}", lang) if has_phrase(f"lesson_level.{name}") else name

    changed = (phrase("sep.list", lang).join(f"{k} {a!r} → {b!r}" for k, a, b in changes[:4])
               or say("changed_code", version=version))
    evidence: list[str] = []
    if cause["kind"] == causes_rules.FORCED_CHECK:
        text = say("forced", version=version, ids=", ".join(cause["names"]))
        evidence += [f"{i}: {d}" for i, d in zip(cause["names"], cause["details"]) if d]
    elif cause["kind"] == causes_rules.GUARDRAIL_MOVED:
        moves = phrase("sep.list", lang).join(
            f"{m['name']} {level(m['from'])} {number(m['base_value'])} → {level('danger')} {number(m['value'])}"
            for m in cause["moves"])
        text = say("moved", changed=changed, moves=moves)
    else:
        text = say("under", version=version, loss=number(cause["train_loss"]), uniform=number(cause["uniform_loss"]))
    word = phrase(f"verdict_word.{verdict}", lang) if has_phrase(f"verdict_word.{verdict}") else verdict
    evidence.insert(0, say("verdict", word=word, reason=reason))
    dangers = {n: g for n, g in (ev.get("guardrails") or {}).items() if g.get("level") == "danger"}
    evidence += [f"{n} = {number(g.get('value'))} ({level(g.get('level'))})" for n, g in sorted(dangers.items())]
    evidence.append(say("losses", inf=number(ev.get("inference_loss")), val=number(ev.get("val_loss"))))
    return {"experiment": version, "text": text, "evidence": phrase("sep.clause", lang).join(evidence), "status": "proposed",
            "cause": cause["kind"], "proposed_at": time.time(), "proposed_by": "rules"}


def write_proposal(run_dir: Path, proposal: Optional[dict[str, Any]]) -> None:
    path = Path(run_dir) / LESSON_FILE
    existing = read_json(path)
    if existing and existing.get("status") in ("accepted", "rejected"):
        return  # the human decided already; a re-analysis does not undo it
    if proposal is None:
        path.unlink(missing_ok=True)
    else:
        write_json(path, proposal)


def pending(run_dir: Path) -> Optional[dict[str, Any]]:
    proposal = read_json(Path(run_dir) / LESSON_FILE)
    return proposal if proposal and proposal.get("status") == "proposed" else None


def accept(lab, run_dir: Path, reviewer: str) -> Optional[str]:
    """Append the pending proposal to LESSONS.md; returns its text (None when nothing was pending)."""
    proposal = pending(run_dir)
    if proposal is None:
        return None
    ensure(lab)
    path = path_of(lab)
    entry = (f"\n## From experiment {proposal['experiment']}\n"
             f"- **Lesson:** {proposal['text']}\n"
             f"- **Evidence:** {proposal['evidence']}\n"
             f"- **Check:** none\n"
             f"- **Source:** experiment {proposal['experiment']}, approved by {reviewer} "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}\n")
    write_text(path, path.read_text(encoding="utf-8").rstrip("\n") + "\n" + entry)
    write_json(Path(run_dir) / LESSON_FILE, {**proposal, "status": "accepted", "decided_at": time.time(), "by": reviewer})
    return proposal["text"]


def reject(run_dir: Path, reviewer: str) -> Optional[str]:
    proposal = pending(run_dir)
    if proposal is None:
        return None
    write_json(Path(run_dir) / LESSON_FILE, {**proposal, "status": "rejected", "decided_at": time.time(), "by": reviewer})
    return proposal["text"]
