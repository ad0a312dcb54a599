"""The memory-entropy guardrail's calibration: what the selection entropy reads on real text.

Trains a small memory model on the bundled corpus and prints, every --every steps and per
memory layer, the selection entropy over SELECTION_WINDOW positions (the guardrail's
measure), the share of distinct chosen entries and the candidate-softmax entropy (the old
measure), each with the level the lab's default thresholds give. It first prints the
entropy of the text's own tokens over windows of 32 and 64 positions: a model that reads
one entry per distinct token reads that.

    python bench/selection_entropy.py --steps 600        # about 15 minutes on one busy CPU core
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def token_window_entropy(docs: list[list[int]], window: int) -> float:
    values = []
    for ids in docs:
        for start in range(0, len(ids) - window + 1, window):
            counts = collections.Counter(ids[start:start + window]).values()
            values.append(sum(c / window * math.log(window / c) for c in counts))
    return sum(values) / len(values)


def main() -> None:
    import torch
    import torch.nn.functional as F

    from corpus.build import build
    from corpus.tokenizer import load_tokenizer
    from minimind.guardrails import level
    from minimind.settings import GuardrailsConfig
    from models.model import SELECTION_WINDOW, MiniMindLM, ModelConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--knowledge-num", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=128, help="positions per training sequence")
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), "small", progress=False)
        tokenizer = load_tokenizer(Path(tmp) / "tokenizer.json")
        docs = [tokenizer.encode(json.loads(line)["text"]).ids for line in (Path(tmp) / "pretrain.jsonl").open()]
    print(f"text's own tokens: entropy {token_window_entropy(docs, 32):.3f} nats over 32 positions, "
          f"{token_window_entropy(docs, 64):.3f} over 64")
    config = ModelConfig(preset="memory", dim=64, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=6400,
                         max_seq_len=args.seq, knowledge_num=args.knowledge_num, knowledge_length=8, knowledge_dim=32,
                         num_candidates=32)
    model = MiniMindLM(config)
    rule = GuardrailsConfig().memory_entropy
    val, train = docs[-64:], docs[:-64]

    def batch(rows: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(len(rows), args.seq + 1, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, :min(len(ids), args.seq + 1)] = torch.tensor(ids[:args.seq + 1])
        return out

    def report(step: int) -> None:
        model.eval()
        model.memory_stats(reset=True)
        with torch.no_grad():
            model(batch(val)[:, :-1])
        stats = model.memory_stats(reset=True)
        model.train()
        layers = sorted({k.split("/")[0] for k in stats if k.startswith("l") and "/" in k})
        parts = [f"{layer}: selection {stats[f'{layer}/selection_entropy']:.3f} "
                 f"({level(stats[f'{layer}/selection_entropy'], rule)}, {stats[f'{layer}/selection_distinct']:.0%} distinct), "
                 f"candidates {stats[f'{layer}/candidate_entropy']:.3f} ({level(stats[f'{layer}/candidate_entropy'], rule)})"
                 for layer in layers]
        print(f"step {step:4d}  " + "  |  ".join(parts), flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    print(f"selection window {SELECTION_WINDOW} positions, knowledge_num {args.knowledge_num}, 32 candidates")
    report(0)
    for step in range(1, args.steps + 1):
        data = batch(random.sample(train, 16))
        out = model(data[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), data[:, 1:].flatten(), ignore_index=0) + out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_optimizer_step(step)
        if step % args.every == 0:
            print(f"step {step:4d}  train loss {loss.item():.3f}")
            report(step)


if __name__ == "__main__":
    main()
