"""`minimind memory show`: which memory entries each token reads, decoded, with weights."""

from __future__ import annotations

from minimind.config import load_config
from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import CHECKPOINTS_DIR, CONFIG_FILE, LAST_CHECKPOINT, best_checkpoint


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
        reads = model.inspect_memory(torch.tensor([ids]), top=top)
    table = Table(title=f"Memory reads of {version} ({path.name})", show_lines=True)
    table.add_column("token")
    table.add_column("layer")
    table.add_column("weight", justify="right")
    table.add_column("entry")
    table.add_column("entry text")
    for position, token_id in enumerate(ids):
        token = tokenizer.decode([token_id])
        for layer, entries in enumerate(reads[position]):
            for entry, weight in entries:
                entry_text = tokenizer.decode([t for t in model.memory_entry(entry) if t != 0])
                table.add_row(repr(token), str(layer), f"{weight:.3f}", str(entry), " ".join(entry_text.split())[:80])
    Console().print(table)
