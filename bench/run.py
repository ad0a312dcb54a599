"""The QUALITY.md performance ratios, timed on the real `models/model.py`.

    python bench/run.py [--quick] [--json] [--threads N] [--module model_1_4_8]

Every number is a ratio of two things measured side by side in this process: the two are
timed alternately (A, B, A, B, ...) and the ratio is the median of the per-pair ratios,
which holds up on a shared, noisy machine better than a ratio of separate medians.
CPU, fp32, as many torch threads as the machine gives (or --threads: on a machine shared
with other work, oversubscribed threads make every number noise; 1 thread holds up). `--quick` runs fewer repeats and
shorter measurements (about a minute); the full run takes a few minutes.

Peak activation memory: a TorchDispatchMode sees every tensor an operator returns and
tracks the bytes of live storages (a storage is released when its weak reference expires);
the peak of live bytes above the starting point, with autograd recording (what training
keeps alive), is compared between the two layers. This is allocator-free and works on CPU,
where torch has no max_memory_allocated; scratch memory inside a kernel is not seen.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]

TARGETS = {  # key: (comparison, target), QUALITY.md
    "memory_vs_ffn_forward": ("<=", 1.5),
    "memory_vs_ffn_train_step": ("<=", 2.0),
    "lookup_1m_vs_65k": ("<=", 1.3),
    "flat_scan_vs_product_keys": (">=", 10.0),
    "model_train_memory_vs_dense": (">=", 0.5),
    "decode_cached_vs_uncached": (">=", 3.0),
    "decode_memory_vs_dense": (">=", 0.8),
    "peak_activation_memory_vs_ffn": ("<=", 2.0),
}


def load_model_module(models_dir: Path, name: str):
    """The model file itself, loaded by path exactly as experiments load it."""
    from models.registry import load_module

    return load_module(models_dir, name)


def paired_ratio(fn_a, fn_b, repeats: int, warmup: int = 1) -> dict:
    """Time fn_a and fn_b alternately; median seconds of each and median of time_a / time_b."""
    for _ in range(warmup):
        fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return {"ratio": statistics.median(ratios), "a_s": statistics.median(times_a), "b_s": statistics.median(times_b)}


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.live.items()):  # release what has been freed
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and storage.nbytes() > 0:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_forward_bytes(layer_forward, x) -> int:
    with LiveBytes() as tracker:
        out = layer_forward(x)  # the output (and the graph it holds) stays alive to the end
    del out
    return tracker.peak


def bench(model, quick: bool) -> tuple[dict, dict]:
    ModelConfig, MiniMindLM = model.ModelConfig, model.MiniMindLM
    repeats = 5 if quick else 15
    tokens = 2048
    dim, vocab = 512, 6400
    results, details = {}, {}

    def layer_setup(knowledge_num):
        cfg = ModelConfig(preset="memory", dim=dim, vocab_size=vocab, knowledge_num=knowledge_num,
                          knowledge_length=32, knowledge_dim=128, num_candidates=32)
        layer = model.MemoryLayer(cfg)
        bank = torch.randint(1, vocab, (knowledge_num, 32), dtype=model.bank_dtype(vocab))
        embedding = torch.nn.Parameter(torch.randn(vocab, dim) * 0.02)
        return cfg, layer, bank, embedding

    torch.manual_seed(0)
    cfg, memory, bank_1m, embedding = layer_setup(1_048_576)
    ffn = model.FeedForward(cfg)
    x = torch.randn(1, tokens, dim)

    # 1. one memory layer vs one dense FFN, forward
    memory.eval()
    with torch.no_grad():
        r = paired_ratio(lambda: memory(x, bank_1m, embedding), lambda: ffn(x), repeats)
    results["memory_vs_ffn_forward"], details["memory_vs_ffn_forward"] = r["ratio"], r

    # 2. forward + backward of the same two layers
    memory.train()
    x_grad = x.clone().requires_grad_()

    def memory_step():
        out, aux = memory(x_grad, bank_1m, embedding)
        (out.sum() + aux).backward()
        memory.pending = []  # the EMA store belongs to a model's update cycle, not to this loop

    r = paired_ratio(memory_step, lambda: ffn(x_grad).sum().backward(), repeats)
    results["memory_vs_ffn_train_step"], details["memory_vs_ffn_train_step"] = r["ratio"], r

    # 3. 1M vs 65k entries: product keys make the lookup grow with sqrt(N), the read not at all
    _, memory_65k, bank_65k, _ = layer_setup(65_536)
    memory.eval(), memory_65k.eval()
    with torch.no_grad():
        r = paired_ratio(lambda: memory(x, bank_1m, embedding), lambda: memory_65k(x, bank_65k, embedding), repeats)
    results["lookup_1m_vs_65k"], details["lookup_1m_vs_65k"] = r["ratio"], r

    # 4. the control: scoring all 1M full keys vs the product-key lookup (same queries, same C)
    scan_tokens = 256 if quick else 1024
    query = torch.randn(scan_tokens, cfg.knowledge_dim)
    flat_keys = torch.randn(cfg.knowledge_num, cfg.knowledge_dim)

    def flat_scan():
        for chunk in query.split(64):
            (chunk @ flat_keys.T).topk(cfg.num_candidates, dim=-1)

    with torch.no_grad():
        r = paired_ratio(flat_scan, lambda: memory.lookup(query), max(3, repeats // 3))
    results["flat_scan_vs_product_keys"], details["flat_scan_vs_product_keys"] = r["ratio"], r
    details["flat_scan_vs_product_keys"]["tokens"] = scan_tokens
    del flat_keys

    # 5. peak activation bytes of one forward, autograd recording, memory vs FFN
    memory.eval()  # statistics still count; only the EMA store is left out
    peak_memory = peak_forward_bytes(lambda t: memory(t, bank_1m, embedding), x_grad)
    peak_ffn = peak_forward_bytes(ffn, x_grad)
    results["peak_activation_memory_vs_ffn"] = peak_memory / peak_ffn
    details["peak_activation_memory_vs_ffn"] = {"memory_bytes": peak_memory, "ffn_bytes": peak_ffn}
    del memory, memory_65k, bank_1m, bank_65k

    # 6. full MiniMind2-size training step (forward, loss, backward, AdamW, EMA hook), seq 512
    batch, seq = (1, 512) if quick else (2, 512)
    models = {preset: MiniMindLM(ModelConfig(preset=preset)) for preset in ("memory", "original")}
    data = torch.randint(0, vocab, (batch, seq + 1))
    optimizers = {preset: torch.optim.AdamW(m.parameters(), lr=1e-4) for preset, m in models.items()}
    steps = {preset: 0 for preset in models}

    def train_step(preset):
        m, opt = models[preset], optimizers[preset]
        out = m(data[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), data[:, 1:].flatten()) + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps[preset] += 1
        m.after_optimizer_step(steps[preset])

    r = paired_ratio(lambda: train_step("memory"), lambda: train_step("original"), 3 if quick else 7)
    # tokens/s memory / tokens/s dense = time dense / time memory
    results["model_train_memory_vs_dense"] = 1 / r["ratio"]
    details["model_train_memory_vs_dense"] = {**r, "batch": batch, "seq": seq,
                                              "memory_tokens_per_s": batch * seq / r["a_s"],
                                              "original_tokens_per_s": batch * seq / r["b_s"]}
    del optimizers

    # 7-8. greedy decoding, 128 new tokens
    new_tokens, prompt = 128, torch.randint(3, vocab, (1, 32))
    for m in models.values():
        m.eval()

    def decode(preset, use_cache):
        return lambda: models[preset].generate(prompt, new_tokens, eos_token_id=None, use_cache=use_cache)

    r = paired_ratio(decode("memory", True), decode("memory", False), 2 if quick else 5)
    results["decode_cached_vs_uncached"] = 1 / r["ratio"]
    details["decode_cached_vs_uncached"] = {**r, "new_tokens": new_tokens, "cached_tokens_per_s": new_tokens / r["a_s"],
                                            "uncached_tokens_per_s": new_tokens / r["b_s"]}
    r = paired_ratio(decode("memory", True), decode("original", True), 3 if quick else 7)
    results["decode_memory_vs_dense"] = 1 / r["ratio"]
    details["decode_memory_vs_dense"] = {**r, "memory_tokens_per_s": new_tokens / r["a_s"],
                                         "original_tokens_per_s": new_tokens / r["b_s"]}
    config = {"layer": {"dim": dim, "hidden_dim": cfg.ffn_hidden_dim, "tokens": tokens, "knowledge_num": cfg.knowledge_num,
                        "knowledge_length": cfg.knowledge_length, "knowledge_dim": cfg.knowledge_dim,
                        "num_candidates": cfg.num_candidates},
              "model": {"presets": ["memory", "original"], "config": "MiniMind2 defaults (ModelConfig())",
                        "train_batch": batch, "seq": seq, "decode_prompt": prompt.shape[1], "decode_new_tokens": new_tokens},
              "repeats": repeats}
    return results, {"config": config, "details": details}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter measurements (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--module", default="model", help="model module in models/ to time (default: model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what torch picks); 1 is steadier on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model_module(REPO / "models", args.module)
    started = time.perf_counter()
    results, extra = bench(model, args.quick)
    passed = {key: (results[key] <= target if op == "<=" else results[key] >= target)
              for key, (op, target) in TARGETS.items()}
    report = {**{key: round(results[key], 3) for key in TARGETS},
              "targets": {key: f"{op} {target}" for key, (op, target) in TARGETS.items()},
              "pass": passed, "all_pass": all(passed.values()),
              "machine": {"device": "cpu", "dtype": "float32", "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "quick": args.quick,
                          "seconds": round(time.perf_counter() - started, 1)},
              **extra}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, (op, target) in TARGETS.items():
            print(f"{key:32s} {results[key]:8.3f}  target {op} {target:<5}  {'pass' if passed[key] else 'MISS'}")
        print(f"({report['machine']['seconds']} s, {torch.get_num_threads()} threads, {'quick' if args.quick else 'full'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
