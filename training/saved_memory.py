"""What a training forward keeps for its backward pass, measured: the source of the memory
plan's per-token counts (minimind.memory_plan.layer_bytes_per_token, head_bytes_per_token).

Every tensor autograd saves passes through a saved_tensors_hooks pack hook; its storage is
counted once (views share it), so the sum is the memory the graph holds when the forward
(the trainer's chunked loss included) has finished. Four forwards, of 1 and 2 layers at 1
and 2 sequences, separate what grows with tokens and layers from what does not (the bf16
copies autocast makes of the weights): per token per layer, and per token outside the
layers (the final norm, the output projection's input, the loss's saved logits gradient).

    python -m training.saved_memory [--preset memory] [--precision bf16] [--seq 512]

prints the measurement at MiniMind2 size (ModelConfig defaults); tests/test_saved_memory.py
reruns it and holds the plan to it.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from typing import Any

import torch


def saved_bytes(model, inputs: torch.Tensor, precision: str) -> int:
    """Bytes of the distinct storages autograd keeps after one training forward and loss."""
    from training.measures import masked_ce

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast(inputs.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        out = model(inputs[:, :-1])
        loss = masked_ce(out.logits, inputs[:, 1:], torch.ones_like(inputs[:, 1:], dtype=torch.float32))
        del out  # the trainer drops the logits once the loss has its gradient (training.loop)
    del loss
    return sum(storages.values())


def measure(model_overrides: dict[str, Any], precision: str = "bf16", seq: int = 512, seed: int = 0) -> dict[str, float]:
    """Saved bytes per token per layer, and per token outside the layers, of a model
    (ModelConfig defaults with `model_overrides`) at `seq` tokens per sequence."""
    from models.model import MiniMindLM, ModelConfig

    grid = {}
    for layers in (1, 2):
        torch.manual_seed(seed)
        model = MiniMindLM(ModelConfig(**{**model_overrides, "n_layers": layers, "max_seq_len": seq})).train()
        vocab = model.config.vocab_size
        for batch in (1, 2):
            inputs = torch.randint(3, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed + batch))
            grid[layers, batch] = saved_bytes(model, inputs, precision)
        del model
    per_layer = (grid[2, 2] - grid[1, 2] - grid[2, 1] + grid[1, 1]) / seq
    per_token = (grid[1, 2] - grid[1, 1]) / seq  # one layer and the head
    return {"layer_bytes_per_token": per_layer, "head_bytes_per_token": per_token - per_layer,
            "seq": seq, "precision": precision}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="memory")
    p.add_argument("--precision", choices=["bf16", "no"], default="bf16")
    p.add_argument("--seq", type=int, default=512)
    args = p.parse_args(argv)
    print(json.dumps({"preset": args.preset, **measure({"preset": args.preset}, args.precision, args.seq)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
