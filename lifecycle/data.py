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


def prepare(lab: Lab, pretrain: Optional[Path], knowledge: Optional[Path], tokenizer: Optional[Path],
            knowledge_num: Optional[int], knowledge_length: Optional[int], sft: Optional[Path] = None,
            chat_template: Optional[Path] = None) -> None:
    from rich.console import Console

    from corpus.knowledge import prepare_knowledge
    from corpus.prepare import prepare_pretrain
    from corpus.sft import prepare_sft
    from minimind.errors import UsageError

    if pretrain is None and sft is None and knowledge is None:
        raise UsageError("give --pretrain, --sft or --knowledge")
    if chat_template is not None and sft is None:
        raise UsageError("--chat-template renders --sft conversations; give --sft too")
    settings = lab.settings()
    tok = tokenizer or lab.resolve(settings.data.tokenizer)
    if not Path(tok).exists():
        raise MinimindError(f"tokenizer {tok} not found: pass --tokenizer (MiniMind's tokenizer.json works) or run 'minimind data build'")
    console = Console()
    from models.registry import model_schema

    _, fields = model_schema(lab)
    max_seq_len = settings.model.get("max_seq_len", fields["max_seq_len"]["default"])
    if pretrain is not None:
        cache = prepare_pretrain(pretrain, tok, lab.cache_dir, max_bad_share=settings.data.max_bad_share)
        console.print(f"pretraining: {cache.num_docs:,} documents, {cache.num_tokens:,} tokens → {cache.path}")
        _report_lines(console, cache)
        _report_truncation(console, cache, max_seq_len)
    if sft is not None:
        cache = prepare_sft(sft, tok, lab.cache_dir, tokenizer_config=chat_template,
                            max_bad_share=settings.data.max_bad_share)
        console.print(f"conversations: {cache.num_docs:,}, {cache.num_tokens:,} tokens of which "
                      f"{cache.meta['target_tokens']:,} assistant tokens (the loss) → {cache.path}")
        _report_lines(console, cache)
        _report_truncation(console, cache, max_seq_len)
    if knowledge is not None:
        num = knowledge_num or settings.model.get("knowledge_num", fields["knowledge_num"]["default"])
        length = knowledge_length or settings.model.get("knowledge_length", fields["knowledge_length"]["default"])
        folder = prepare_knowledge(knowledge, tok, num, length, lab.cache_dir, max_bad_share=settings.data.max_bad_share)
        console.print(f"knowledge: {num:,} entries × {length} tokens → {folder}")
    console.print("Use it in an experiment with --set data.pretrain=PATH (and data.knowledge, data.tokenizer); "
                  "the trainer finds this cache by content.")


def _report_truncation(console, cache, max_seq_len: int) -> None:
    """Training cuts each document at max_seq_len + 1 tokens: say what that leaves untrained."""
    import numpy as np

    from training.data import untrained_tokens

    docs, tokens = untrained_tokens(np.diff(np.asarray(cache.offsets, dtype=np.int64)), max_seq_len)
    if docs:
        console.print(f"[yellow]{docs:,} of {cache.num_docs:,} documents are longer than max_seq_len {max_seq_len} "
                      f"(minimind.yaml model.max_seq_len; --set max_seq_len=N per experiment): {tokens:,} of their "
                      f"tokens ({tokens / max(1, cache.num_tokens):.1%} of all) are cut off and never trained on[/]")


def _report_lines(console, cache) -> None:
    if cache.meta.get("blank_lines"):
        console.print(f"{cache.meta['blank_lines']:,} blank line(s) skipped")
    if cache.bad_lines:
        shown = ", ".join(str(n) for n in cache.bad_lines[:20])
        console.print(f"[yellow]{cache.meta['bad_line_count']} malformed line(s) skipped: {shown}"
                      f"{' ...' if cache.meta['bad_line_count'] > 20 else ''}[/]")
