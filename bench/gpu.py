"""The lab's recipe on one GPU: throughput, MFU, memory, decoding, evaluation, DeepSpeed vs plain.

    python bench/gpu.py [--peak-tflops T] [--budget-gb 24] [--batch 16] [--steps 10]
    python bench/gpu.py --cpu-smoke      # every measurement at a tiny size on the CPU

Prints one JSON object. At MiniMind2 size (models/model.py ModelConfig defaults), seq 512,
under the run's default precision on CUDA (bf16 autocast, TF32 for what stays fp32):

- train: tokens/s and MFU (6 N tokens/s over the card's peak dense bf16 FLOPs) for the
  memory and original presets, AdamW and the trainer's chunked loss, one micro-batch;
- memory: peak allocated GPU memory of that step, the memory plan's estimate of it
  (minimind.memory_plan), and the largest micro-batch whose step stays within --budget-gb
  (24 GB, an RTX 4090), found by doubling then bisection on max_memory_allocated, each
  step taken through the trainer's own path (make_accelerator, prepare_for_training:
  accelerate's autocast with bf16 logits, the chunked loss), beside the plan's answer;
- decode: greedy tokens/s with the KV cache, batch 1;
- eval: wall time of a small evaluation (teacher-forced validation loss and token-by-token
  inference loss, training.measures) on the GPU and on the CPU;
- deepspeed: tokens/s of one process through training.runtime.make_accelerator with
  launch.deepspeed=zero2 and without it (plain accelerate, which is DDP with more processes),
  each in its own process; skipped with a reason if deepspeed is not installed.

Without CUDA it prints {"cuda": false, "reason": ...} and exits 0, unless --cpu-smoke asks
for the same code paths at a tiny size on the CPU (numbers meaningless, paths proven).
Budget: under 8 minutes on one GPU with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Peak dense bf16 tensor FLOPs (no sparsity), TFLOP/s, from the vendors' data sheets; a
# name matches when it is contained in torch.cuda.get_device_name(). Override: --peak-tflops.
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "A6000": 155.0, "A10G": 70.0, "A10": 125.0,
    "RTX 4090": 165.0, "RTX 4080": 97.0, "RTX 3090": 71.0, "L4": 121.0, "V100": 125.0, "T4": 65.0,
}
TINY = {"dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 512, "max_seq_len": 64,
        "knowledge_num": 256, "knowledge_length": 8, "knowledge_dim": 16, "num_candidates": 4}


def peak_tflops(name: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key.lower() in name.lower():
            return PEAK_BF16_TFLOPS[key], f"table ({key})"
    return None, "unknown card: pass --peak-tflops"


def model_config(preset: str, smoke: bool, seq: int) -> dict:
    return {"preset": preset, **(TINY if smoke else {"max_seq_len": seq})}


def build(preset: str, smoke: bool, seq: int, device):
    import torch

    from models.model import MiniMindLM, ModelConfig

    torch.manual_seed(0)
    return MiniMindLM(ModelConfig(**model_config(preset, smoke, seq))).to(device).train()


def batch(model, size: int, seq: int, device):
    import torch

    g = torch.Generator().manual_seed(size)
    ids = torch.randint(3, model.config.vocab_size, (size, seq + 1), generator=g)
    mask = torch.ones(size, seq)
    return ids[:, :-1].to(device), ids[:, 1:].to(device), mask.to(device)


def train_step(model, optimizer, data, autocast):
    from training.measures import masked_ce

    inputs, targets, mask = data
    with autocast():
        out = model(inputs)
        loss = masked_ce(out.logits, targets, mask)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(preset: str, args, device, autocast, peak) -> dict:
    """Tokens/s of training steps at one micro-batch, MFU and peak memory."""
    import torch

    from minimind.memory_plan import train_memory
    from models.registry import config_spec

    model = build(preset, args.cpu_smoke, args.seq, device)
    seq = model.config.max_seq_len
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    data = batch(model, args.batch, seq, device)
    train_step(model, optimizer, data, autocast)  # warm-up: kernels, allocator, optimizer state
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(model, optimizer, data, autocast)
    loss = float(loss.detach())
    sync(device)
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    tok_s = args.batch * seq * args.steps / seconds
    estimate = train_memory(model.config.to_dict(), config_spec(model.config), n_params, args.batch * seq,
                            args.precision)["total"]
    out = {"params": n_params, "micro_batch": args.batch, "seq": seq, "steps": args.steps, "tokens_per_s": tok_s,
           "mfu": 6 * n_params * tok_s / (peak * 1e12) if peak else None, "final_loss": loss,
           "estimated_bytes": estimate}
    if device.type == "cuda":
        out["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    del model, optimizer, data
    return out


def search_largest(fits, upper: int) -> int:
    """The largest n in [1, upper] with fits(n), 0 if none; fits must be monotone (a bigger
    batch needs more memory). Doubling from 1, then bisection: O(log n) training steps."""
    low, high = 0, 1
    while high <= upper and fits(high):
        low, high = high, high * 2
    high = min(high, upper + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def trainer_path(preset: str, args, kind: str = "plain"):
    """(accelerator, model, optimizer, seq) built as training.loop builds them: the run's own
    accelerator (training.runtime.make_accelerator, DeepSpeed for kind "zero2") and
    prepare_for_training, which keeps accelerate's autocast and the logits' bf16."""
    import torch

    from minimind.config import from_dict
    from training.runtime import make_accelerator, prepare_for_training

    cfg = from_dict({"version": "0.0.0", "model_module": "model", "model": model_config(preset, args.cpu_smoke, args.seq),
                     "train": {"batch_size": args.batch, "accumulation_steps": 1, "grad_clip": 1.0},
                     "launch": {"deepspeed": "zero2" if kind == "zero2" else None, "cpu": args.cpu_smoke,
                                "mixed_precision": args.precision}})
    model = build(preset, args.cpu_smoke, args.seq, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "0.0.0"
        run_dir.mkdir(parents=True)
        acc = make_accelerator(cfg, run_dir, sum(p.numel() for p in model.parameters()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = prepare_for_training(acc, model, optimizer)
    return acc, model, optimizer, cfg.model.get("max_seq_len", args.seq)


def trainer_step(acc, model, optimizer, data, deepspeed: bool = False):
    """One optimizer step as training.loop.Trainer.train_step takes it: the chunked loss,
    accelerate's backward, clipping (DeepSpeed clips in its step), the step; the logits are
    dropped before backward, as there."""
    from training.measures import masked_ce

    inputs, targets, mask = data
    with acc.accumulate(model):
        out = model(inputs)
        loss = masked_ce(out.logits, targets, mask) + out.aux_loss
        del out
        acc.backward(loss)
        if acc.sync_gradients and not deepspeed:
            acc.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def largest_batch(preset: str, args, device) -> dict:
    """The largest micro-batch whose training step, through the trainer's own path
    (trainer_path, trainer_step), stays within the budget (max_memory_allocated)."""
    import torch

    budget = int(args.budget_gb * 2 ** 30)
    acc, model, optimizer, seq = trainer_path(preset, args)
    unwrapped = acc.unwrap_model(model)
    probes: dict[int, int | None] = {}

    def peak_of(size: int) -> int | None:
        if size in probes:
            return probes[size]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            trainer_step(acc, model, optimizer, batch(unwrapped, size, seq, acc.device))
            sync(device)
            probes[size] = int(torch.cuda.max_memory_allocated(device))
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            probes[size] = None
        return probes[size]

    def fits(size: int) -> bool:
        peak = peak_of(size)
        return peak is not None and peak <= budget

    low = search_largest(fits, args.max_batch)
    out = {"budget_bytes": budget, "largest_micro_batch": low,
           "capped_at": args.max_batch if low == args.max_batch else None,
           "peak_bytes_at_largest": probes.get(low), "probes": {str(k): v for k, v in sorted(probes.items())},
           "planned_largest_micro_batch": planned_largest(unwrapped, seq, args, budget),
           "path": "trainer (make_accelerator, prepare_for_training, masked_ce)"}
    del acc, model, optimizer
    return out


def planned_largest(model, seq: int, args, budget: int) -> int:
    """The largest micro-batch whose step the memory plan (minimind.memory_plan) puts within `budget`."""
    from minimind.memory_plan import train_memory
    from models.registry import config_spec

    m, spec, n_params = model.config.to_dict(), config_spec(model.config), sum(p.numel() for p in model.parameters())
    return search_largest(lambda b: train_memory(m, spec, n_params, b * seq, args.precision)["total"] <= budget,
                          args.max_batch)


def planned_largest_batch(preset: str, args, device) -> dict:
    """The CPU smoke's stand-in: one step through the trainer's path (the code path proven),
    then the search over the memory plan's estimate (the CPU has no max_memory_allocated)."""
    acc, model, optimizer, seq = trainer_path(preset, args)
    unwrapped = acc.unwrap_model(model)
    loss = float(trainer_step(acc, model, optimizer, batch(unwrapped, 1, seq, acc.device)))
    budget = int(args.budget_gb * 2 ** 30)
    return {"budget_bytes": budget, "largest_micro_batch": planned_largest(unwrapped, seq, args, budget),
            "measured": False, "trainer_step_loss": loss,
            "note": "CPU: the search over the memory plan's estimate (no max_memory_allocated)"}


def decode(args, device, autocast) -> dict:
    import torch

    model = build("memory", args.cpu_smoke, args.seq, device).eval()
    prompt = torch.randint(3, model.config.vocab_size, (1, 32 if not args.cpu_smoke else 8), device=device)
    new = min(args.decode_tokens, model.config.max_seq_len - prompt.shape[1])
    with torch.no_grad(), autocast():
        model.generate(prompt, 4, eos_token_id=None)  # warm-up
        sync(device)
        started = time.perf_counter()
        out = model.generate(prompt, new, eos_token_id=None, use_cache=True)
        sync(device)
    seconds = time.perf_counter() - started
    return {"preset": "memory", "batch": 1, "new_tokens": out.shape[1] - prompt.shape[1],
            "tokens_per_s": (out.shape[1] - prompt.shape[1]) / seconds}


def evaluation(args, device, autocast) -> dict:
    """A small evaluation (validation loss + inference loss) on `device` and on the CPU."""
    import numpy as np
    import torch

    from training import measures

    rng = np.random.default_rng(0)
    seq = TINY["max_seq_len"] if args.cpu_smoke else args.seq
    docs = [rng.integers(3, 512 if args.cpu_smoke else 6400, size=seq + 1) for _ in range(args.eval_docs)]
    pairs = [(list(map(int, d[:30])), list(map(int, d[30:30 + args.eval_tokens]))) for d in docs[:4]]
    out = {"docs": len(docs), "inference_pairs": len(pairs), "inference_tokens": args.eval_tokens}
    for where, dev, ctx in (("device", device, autocast), ("cpu", torch.device("cpu"), None)):
        from contextlib import nullcontext

        model = build("memory", args.cpu_smoke, args.seq, dev).eval()
        started = time.perf_counter()
        with (ctx or nullcontext)():
            val = measures.val_loss(model, docs, seq, 8, 1000)
            inf = measures.inference_loss(model, pairs)
        sync(dev)
        out[f"{where}_s"] = time.perf_counter() - started
        out[f"{where}_val_loss"], out[f"{where}_inference_loss"] = val, inf
        del model
    out["device"] = str(device)
    out["speedup"] = out["cpu_s"] / out["device_s"] if out["device_s"] else None
    return out


def backend_worker(kind: str, args) -> dict:
    """One process: tokens/s through the trainer's own accelerator (training.runtime.make_accelerator)."""
    import torch

    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    acc, model, optimizer, seq = trainer_path("memory", args, kind)
    data = batch(acc.unwrap_model(model), args.batch, seq, acc.device)
    deepspeed = acc.distributed_type.name == "DEEPSPEED"
    trainer_step(acc, model, optimizer, data, deepspeed)
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer_step(acc, model, optimizer, data, deepspeed)
    sync(device)
    seconds = time.perf_counter() - started
    return {"backend": kind, "distributed_type": acc.distributed_type.name, "mixed_precision": acc.mixed_precision,
            "tokens_per_s": args.batch * seq * args.steps / seconds}


def backends(args) -> dict:
    import importlib.util

    # not imported here (it prints to stdout and takes seconds); a worker that fails to
    # import it reports why
    have_ds = None if importlib.util.find_spec("deepspeed") else "deepspeed is not installed (pip install -e '.[gpu]')"
    out: dict = {}
    for kind in ("plain", "zero2"):
        if kind == "zero2" and have_ds:
            out[kind] = {"skipped": have_ds}
            continue
        argv = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind, "--batch", str(args.batch),
                "--steps", str(args.steps), "--seq", str(args.seq), "--precision", args.precision]
        if args.cpu_smoke:
            argv.append("--cpu-smoke")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        out[kind] = json.loads(lines[-1]) if done.returncode == 0 and lines else {
            "failed": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:300]}"}
    if "tokens_per_s" in out.get("zero2", {}) and "tokens_per_s" in out.get("plain", {}):
        out["zero2_vs_plain"] = out["zero2"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
    return out


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: prove every code path")
    p.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the card (default: the table)")
    p.add_argument("--budget-gb", type=float, default=24.0, help="memory budget of the largest-batch search (GiB)")
    p.add_argument("--batch", type=int, help="micro-batch of the throughput runs (default 16; smoke 2)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 10; smoke 2)")
    p.add_argument("--seq", type=int, default=512, help="sequence length (max_seq_len)")
    p.add_argument("--max-batch", type=int, default=512, help="upper end of the largest-batch search")
    p.add_argument("--decode-tokens", type=int, default=256, help="new tokens of the decode measurement")
    p.add_argument("--eval-docs", type=int, help="documents of the small evaluation (default 32; smoke 4)")
    p.add_argument("--eval-tokens", type=int, help="inference-loss tokens per pair (default 64; smoke 4)")
    p.add_argument("--worker-timeout", type=float, default=240.0, help="seconds for each backend process")
    p.add_argument("--precision", choices=["bf16", "no"], help="autocast (default bf16 on CUDA, no in the smoke)")
    p.add_argument("--_worker", choices=["plain", "zero2"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    args.batch = args.batch or (2 if smoke else 16)
    args.steps = args.steps or (2 if smoke else 10)
    args.eval_docs = args.eval_docs or (4 if smoke else 32)
    args.eval_tokens = args.eval_tokens or (4 if smoke else 64)
    args.precision = args.precision or ("no" if smoke else "bf16")
    if smoke:
        args.decode_tokens = min(args.decode_tokens, 16)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    if args._worker:
        print(json.dumps(backend_worker(args._worker, args)), flush=True)
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print(json.dumps({"cuda": False, "reason": "torch sees no CUDA device (torch "
                          f"{torch.__version__}); --cpu-smoke runs the code paths at a tiny size on the CPU"}))
        return 0
    from contextlib import nullcontext

    from training.runtime import enable_tf32

    device = torch.device("cuda", 0) if cuda and not args.cpu_smoke else torch.device("cpu")
    enable_tf32(device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_source = peak_tflops(name, args.peak_tflops) if device.type == "cuda" else (args.peak_tflops, "cpu")
    started = time.perf_counter()
    result: dict = {"cuda": cuda, "smoke": args.cpu_smoke, "device": name, "torch": torch.__version__,
                    "precision": args.precision, "peak_tflops": peak, "peak_source": peak_source,
                    "model": "tiny (smoke)" if args.cpu_smoke else f"MiniMind2 size (ModelConfig defaults), seq {args.seq}"}
    result["train"] = {preset: throughput(preset, args, device, autocast, peak) for preset in ("memory", "original")}
    search = largest_batch if device.type == "cuda" else planned_largest_batch
    # the trainer's accelerator imports DeepSpeed, whose logger writes to stdout: the one
    # JSON line must stay alone there
    with contextlib.redirect_stdout(sys.stderr):
        result["largest_batch"] = search("memory", args, device)
    result["decode"] = decode(args, device, autocast)
    result["eval"] = evaluation(args, device, autocast)
    result["backends"] = backends(args)
    result["wall_s"] = time.perf_counter() - started
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
