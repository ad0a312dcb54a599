"""`minimind data build` (the bundled fact corpus) and `minimind data prepare` (the user's own data)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError
from minimind.lab import Lab


def build_data(lab: Lab, size: str) -> None:
    """Build pretrain.jsonl, knowledge.json, probes.json and tokenizer.json into the lab's data/."""
    from corpus.build import build, print_summary

    print_summary(build(lab.data_dir, size))
    print(f"Wrote {lab.data_dir}")


def prepare(lab: Lab, pretrain: Path, knowledge: Optional[Path], tokenizer: Optional[Path],
            knowledge_num: Optional[int], knowledge_length: Optional[int]) -> None:
    from rich.console import Console

    from corpus.knowledge import prepare_knowledge
    from corpus.prepare import prepare_pretrain

    settings = lab.settings()
    tok = tokenizer or lab.resolve(settings.data.tokenizer)
    if not Path(tok).exists():
        raise MinimindError(f"tokenizer {tok} not found: pass --tokenizer (MiniMind's tokenizer.json works) or run 'minimind data build'")
    console = Console()
    cache = prepare_pretrain(pretrain, tok, lab.cache_dir, max_bad_share=settings.data.max_bad_share)
    console.print(f"pretraining: {cache.num_docs:,} documents, {cache.num_tokens:,} tokens → {cache.path}")
    if cache.bad_lines:
        shown = ", ".join(str(n) for n in cache.bad_lines[:20])
        console.print(f"[yellow]{len(cache.bad_lines)} malformed line(s) skipped: {shown}{' ...' if len(cache.bad_lines) > 20 else ''}[/]")
    if knowledge is not None:
        from lifecycle.new import model_schema

        _, fields = model_schema(lab)
        num = knowledge_num or settings.model.get("knowledge_num", fields["knowledge_num"]["default"])
        length = knowledge_length or settings.model.get("knowledge_length", fields["knowledge_length"]["default"])
        folder = prepare_knowledge(knowledge, tok, num, length, lab.cache_dir, max_bad_share=settings.data.max_bad_share)
        console.print(f"knowledge: {num:,} entries × {length} tokens → {folder}")
    console.print("Use it in an experiment with --set data.pretrain=PATH (and data.knowledge, data.tokenizer); "
                  "the trainer finds this cache by content.")
