"""`minimind memory show`: which memory entries each token reads, decoded, with weights,
and how spread the chosen entries are (the memory-entropy guardrail's measure)."""

from __future__ import annotations

import math
from collections import Counter

from minimind.config import load_config
from minimind.errors import MinimindError, UsageError
from minimind.guardrails import LIGHTS, upgrade_eval
from minimind.lab import Lab
from minimind.rundir import CHECKPOINTS_DIR, CONFIG_FILE, EVAL_FILE, LAST_CHECKPOINT, best_checkpoint, read_json


def show_memory(lab: Lab, version: str, text: str, top: int) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from corpus.tokenizer import load_tokenizer
    from models.registry import load_checkpoint

    run_dir = lab.require_run(version)
    if not text.strip():
        raise UsageError("--text must not be empty")
    cfg = load_config(run_dir / CONFIG_FILE)
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    candidates = [ckpt_dir / best_checkpoint(cfg.model["dim"], cfg.stage), ckpt_dir / LAST_CHECKPOINT]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise MinimindError(f"experiment {version} has no checkpoint yet")
    model, _ = load_checkpoint(path, lab.models_dir)
    model.eval()
    if not getattr(model.config, "has_memory", False):
        raise MinimindError(f"experiment {version} uses preset '{model.config.preset}', which has no memory layer")
    tokenizer = load_tokenizer(lab.resolve(cfg.data.tokenizer))
    ids = tokenizer.encode(text).ids
    if not ids:
        raise UsageError("--text produced no tokens")
    with torch.no_grad():
        reads = model.inspect_memory(torch.tensor([ids]), top=model.config.num_candidates)
    table = Table(title=f"Memory reads of {version} ({path.name})", show_lines=True)
    table.add_column("token")
    table.add_column("layer")
    table.add_column("weight", justify="right")
    table.add_column("entry")
    table.add_column("entry text")
    for position, token_id in enumerate(ids):
        token = tokenizer.decode([token_id])
        for layer, entries in enumerate(reads[position]):
            for entry, weight in entries[:top]:
                entry_text = tokenizer.decode([t for t in model.memory_entry(entry) if t != 0])
                table.add_row(repr(token), str(layer), f"{weight:.3f}", str(entry), " ".join(entry_text.split())[:80])
    console = Console()
    console.print(table)
    for line in selection_lines(reads, read_json(run_dir / EVAL_FILE)):
        console.print(line, markup=False, highlight=False)
    for line in probe_lines(lab, cfg, model, tokenizer, text):
        console.print(line, markup=False, highlight=False)


def spread(chosen: list[int]) -> tuple[float, int]:
    """(entropy in nats, distinct count) of the entries chosen by a run of positions."""
    counts = Counter(chosen).values()
    n = len(chosen)
    return sum(c / n * math.log(n / c) for c in counts), len(counts)


def selection_lines(reads: list, ev) -> list[str]:
    """Per layer: how many distinct entries this text's positions chose (each position's best
    candidate) and their entropy, beside the mean candidate-softmax entropy; then what the
    run's evaluation measured, both measures where it has them."""
    lines = []
    n = len(reads)
    for layer in range(len(reads[0]) if reads else 0):
        entropy, distinct = spread([reads[t][layer][0][0] for t in range(n)])
        candidate = sum(-sum(w * math.log(w) for _, w in reads[t][layer] if w > 0) for t in range(n)) / n
        lines.append(f"Layer {layer}: the {n} positions chose {distinct} distinct entries (selection entropy "
                     f"{entropy:.3f} nats over this text, at most ln {n} = {math.log(n):.3f}); candidate-softmax "
                     f"entropy {candidate:.3f} nats (how evenly each token weighs its candidates).")
    ev = upgrade_eval(ev)
    if ev is not None and (ev.get("memory_entropy") is not None or ev.get("memory_candidate_entropy") is not None):
        guard = (ev.get("guardrails") or {}).get("memory_entropy") or {}
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        window = ev.get("memory_selection_window")
        selection = (f"memory_entropy (selection entropy of the worst layer over {window}-position windows) "
                     f"{fmt(ev.get('memory_entropy'))} {LIGHTS.get(guard.get('level'), '⚪')} {guard.get('level', 'n/a')}"
                     if window else "memory_entropy not measured (this evaluation predates the selection measure)")
        lines.append(f"The run's evaluation: {selection}; candidate-softmax entropy "
                     f"{fmt(ev.get('memory_candidate_entropy'))} nats (not judged).")
    return lines


def matching_probes(probes: dict, text: str) -> list[tuple[str, dict]]:
    """[(split, probe)] whose prompt is `text` (spacing ignored): a prompt such as "Mexico
    shares a border with" asks several facts, one probe each."""
    wanted = " ".join(text.split())
    return [(split, probe) for split, items in (probes or {}).items() for probe in items or []
            if " ".join(str(probe.get("prompt", "")).split()) == wanted]


def probe_lines(lab: Lab, cfg, model, tokenizer, text: str, limit: int = 8) -> list[str]:
    """When `text` is a probe's prompt: for each fact it asks, whether that fact's bank entry
    is among the candidates read at its last token, measured exactly as eval.json's
    retrieval diagnostics measure it."""
    import torch

    from corpus.knowledge import bank_rows, probe_key
    from training.measures import entry_rank, prompt_reads
    from training.runtime import load_probes

    found = matching_probes(load_probes(lab, cfg) or {}, text)
    if not found:
        return []
    path = lab.resolve(cfg.data.knowledge) if cfg.data.knowledge else None
    bank = bank_rows(path, model.config.knowledge_num) if path and path.is_file() else {}
    with torch.no_grad():
        reads = prompt_reads(model, tokenizer.encode(found[0][1]["prompt"], add_special_tokens=False).ids)
    c = model.config.num_candidates
    lines = []
    for split, probe in found[:limit]:
        head = f"Probe {probe.get('id')} ({split}) asks \"{probe['prompt']} {probe['answer']}\""
        rows = bank.get(probe_key(probe))
        if not rows:
            lines.append(f"{head}: the fact is in no bank entry, so there is no entry it should read.")
            continue
        where = ", ".join(map(str, rows[:4])) + (" ..." if len(rows) > 4 else "")
        per_layer = [entry_rank([layer], rows) for layer in reads]
        if all(r is None for r in per_layer):
            lines.append(f"{head}: its entry {where} was NOT read at the last token (not among the {c} candidates "
                         "of any memory layer).")
        else:
            ranks = ", ".join(f"layer {i} rank {r}" for i, r in enumerate(per_layer) if r is not None)
            lines.append(f"{head}: its entry {where} was read at the last token ({ranks} of {c} candidates).")
    if len(found) > limit:
        lines.append(f"... and {len(found) - limit} more probes with this prompt.")
    return lines
