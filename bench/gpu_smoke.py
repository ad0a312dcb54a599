"""The lab's recipe on one GPU, end to end: what `bench/gpu_smoke.sh run` executes.

    python bench/gpu_smoke.py --out smoke.json [--budget-s 420] [--cpu]

Steps, each under its own time limit, the JSON rewritten after every step so a run cut
short still leaves what it measured:

1. `peak`: one training step of the memory preset at MiniMind2 size through the trainer's own
   path (training.runtime.make_accelerator, bf16, the chunked loss) at micro-batch 128 x 512,
   plain accelerate and DeepSpeed ZeRO-2, each in its own process: peak allocated memory beside
   the memory plan's figure for the same step, the dtype of the logits the trainer receives,
   tokens/s.
2. `lab`: a real lab (init, data build, `new` of the memory preset at MiniMind2 size with
   ZeRO-2 and bf16 for about 100 steps, evaluation every 20); a `kill -9` of the run's process
   group once a checkpoint exists, `status` must say `lost`, `resume` continues to the end and
   the pipeline evaluates and analyses. Then the trainer's periodic evaluation at the best
   step against the pipeline's fresh evaluation of that step's checkpoint (a stale value table
   under ZeRO-2 shows here as a difference far above bf16 rounding).
3. `bench`: bench/gpu.py with shortened settings (throughput and MFU, largest micro-batch in
   24 GB, decode, evaluation on GPU vs CPU, ZeRO-2 vs plain).

`--cpu` runs the same steps at a tiny size on the CPU (the paths proven, numbers meaningless);
tests/test_gpu_smoke.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_MODEL = {"dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64, "knowledge_num": 256,
              "knowledge_length": 8, "knowledge_dim": 16, "num_candidates": 4}


def env(extra: dict | None = None) -> dict:
    """The children's environment: this checkout first on the path, no inherited rank variables."""
    out = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    out.update(extra or {})
    return out


def minimind(lab: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", *args], cwd=lab,
                          env=env({"MINIMIND_LAB": str(lab)}), capture_output=True, text=True, timeout=timeout)


def tail(text: str, n: int = 6) -> list[str]:
    return [line[:300] for line in (text or "").strip().splitlines()[-n:]]


# --- 1. peak memory through the trainer's path --------------------------------------------

def plan_bytes(model, batch_tokens: int, precision: str) -> dict:
    """The memory plan's figure for this step (minimind.memory_plan, the one the trainer uses)."""
    from minimind.memory_plan import train_memory
    from models.registry import config_spec

    return train_memory(model.config.to_dict(), config_spec(model.config), sum(p.numel() for p in model.parameters()),
                        batch_tokens, precision)


def peak_worker(kind: str, micro_batch: int, seq: int, cpu: bool) -> dict:
    """One process: two training steps through make_accelerator; peak memory, logits dtype."""
    import torch

    from minimind.config import from_dict
    from models.model import MiniMindLM, ModelConfig
    from training.measures import masked_ce
    from training.runtime import enable_tf32, make_accelerator, prepare_for_training

    model_cfg = {"preset": "memory", **(TINY_MODEL if cpu else {"max_seq_len": seq})}
    precision = "no" if cpu else "bf16"
    cfg = from_dict({"version": "0.0.0", "model_module": "model", "model": model_cfg,
                     "train": {"batch_size": micro_batch, "accumulation_steps": 1, "grad_clip": 1.0},
                     "launch": {"deepspeed": "zero2" if kind == "zero2" else None, "cpu": cpu,
                                "mixed_precision": precision}})
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**model_cfg))
    seq = model.config.max_seq_len
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "0.0.0"
        run_dir.mkdir(parents=True)
        acc = make_accelerator(cfg, run_dir, sum(p.numel() for p in model.parameters()))
    enable_tf32(acc.device)
    plan = plan_bytes(model, micro_batch * seq, precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = prepare_for_training(acc, model, optimizer)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 6400 if not cpu else 512, (micro_batch, seq + 1), generator=g)
    inputs, targets = ids[:, :-1].to(acc.device), ids[:, 1:].to(acc.device)
    mask = torch.ones(micro_batch, seq, device=acc.device)
    cuda = acc.device.type == "cuda"
    dtypes = []

    def step():
        with acc.accumulate(model):
            out = model(inputs)
            dtypes.append(str(out.logits.dtype).replace("torch.", ""))
            loss = masked_ce(out.logits, targets, mask)
            del out  # as the trainer does: the logits need not live through backward
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    out: dict = {"backend": kind, "micro_batch": micro_batch, "seq": seq, "precision": precision,
                 "distributed_type": acc.distributed_type.name, "plan_bytes": plan}
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(acc.device)
        step()  # the first step allocates the optimizer state: the steady peak is the second's
        if cuda:
            torch.cuda.synchronize(acc.device)
            out["peak_first_step_bytes"] = int(torch.cuda.max_memory_allocated(acc.device))
            torch.cuda.reset_peak_memory_stats(acc.device)
        started = time.perf_counter()
        out["loss"] = step()
        if cuda:
            torch.cuda.synchronize(acc.device)
            out["peak_bytes"] = int(torch.cuda.max_memory_allocated(acc.device))
            out["peak_vs_plan"] = out["peak_bytes"] / plan["total"]
        out["step_s"] = time.perf_counter() - started
        out["tokens_per_s"] = micro_batch * seq / out["step_s"]
    except Exception as exc:  # an OOM is a measurement here, not a crash of the smoke
        out["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if cuda:
            out["peak_bytes_before_failure"] = int(torch.cuda.max_memory_allocated(acc.device))
    out["logits_dtype"] = dtypes[0] if dtypes else None
    return out


def peak(args) -> dict:
    import importlib.util

    result: dict = {}
    batch = 2 if args.cpu else args.micro_batch
    for kind in ("plain", "zero2"):
        if kind == "zero2" and importlib.util.find_spec("deepspeed") is None:
            result[kind] = {"skipped": "deepspeed is not installed"}
            continue
        argv = [sys.executable, str(Path(__file__).resolve()), "--_peak", kind, "--micro-batch", str(batch),
                "--seq", str(args.seq)] + (["--cpu"] if args.cpu else [])
        extra = {"DS_ACCELERATOR": "cpu"} if args.cpu else {}
        done = subprocess.run(argv, capture_output=True, text=True, env=env(extra), timeout=args.step_timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result[kind] = json.loads(lines[-1]) if done.returncode == 0 and lines else {
            "failed": f"exit {done.returncode}", "stderr": tail(done.stderr, 8)}
    return result


# --- 2. a real lab: ZeRO-2 training, kill -9, resume, periodic vs fresh evaluation --------

def lab_sets(cpu: bool) -> list[str]:
    sets = ["train.max_steps=100", "train.epochs=8", "train.batch_size=32", "train.eval_interval=20",
            "train.save_interval=20", "train.log_interval=10", "train.warmup_steps=10",
            "eval.num_samples=5", "eval.max_val_batches=8", "eval.chat_probes=10", "eval.max_new_tokens=24",
            "launch.deepspeed=zero2"]
    if cpu:
        sets += [f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "max_seq_len"]
        sets += ["model.max_seq_len=128", "train.max_steps=40", "train.eval_interval=10", "train.save_interval=10",
                 "launch.cpu=true", "launch.mixed_precision=auto"]
    else:
        sets += ["launch.mixed_precision=bf16"]
    return sets


def status(lab: Path, version: str) -> dict:
    done = minimind(lab, "status", version, "--json", timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {"state": None, "error": tail(done.stderr, 2)}


def wait_for(lab: Path, version: str, until, timeout: float, poll: float = 2.0) -> tuple[dict, float]:
    started = time.time()
    while True:
        st = status(lab, version)
        if until(st) or time.time() - started > timeout:
            return st, time.time() - started
        time.sleep(poll)


def lab_run(args, result: dict) -> None:
    lab = Path(tempfile.mkdtemp(prefix="minimind-gpu-smoke-"))
    result["lab"] = str(lab)
    done = minimind(lab.parent, "init", str(lab))
    if done.returncode:
        raise RuntimeError(f"init: {tail(done.stderr)}")
    started = time.time()
    done = minimind(lab, "data", "build", "--size", "small", timeout=300)
    result["data_build_s"] = round(time.time() - started, 1)
    if done.returncode:
        raise RuntimeError(f"data build: {tail(done.stderr)}")
    version = "0.1.0"
    cmd = ["new", version, "--goal", "GPU smoke: the lab recipe", "--hypothesis", "it trains, resumes and evaluates",
           "--agent", "offline", "--yes"] + [x for s in lab_sets(args.cpu) for x in ("--set", s)]
    extra = {"DS_ACCELERATOR": "cpu"} if args.cpu else {}
    started = time.time()
    done = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", *cmd], cwd=lab,
                          env=env({"MINIMIND_LAB": str(lab), **extra}), capture_output=True, text=True, timeout=300)
    result["new"] = {"exit": done.returncode, "s": round(time.time() - started, 1), "out": tail(done.stdout, 12)}
    if done.returncode:
        raise RuntimeError(f"new: {tail(done.stderr)}")

    # kill -9 once a checkpoint exists and the run is past it
    kill_at = 50 if not args.cpu else 20
    ckpt = lab / "runs" / version / "checkpoints" / "last.pth"
    st, waited = wait_for(lab, version, lambda s: s.get("state") not in ("running", "queued", "drafted")
                          or (ckpt.exists() and (s.get("step") or 0) >= kill_at), args.step_timeout)
    result["before_kill"] = {"state": st.get("state"), "step": st.get("step"), "waited_s": round(waited, 1),
                             "phase": st.get("phase")}
    if st.get("state") == "running" and st.get("pid"):
        os.killpg(int(st["pid"]), signal.SIGKILL)
        st, waited = wait_for(lab, version, lambda s: s.get("state") == "lost", 90, poll=1.0)
        result["after_kill"] = {"state": st.get("state"), "seconds_to_lost": round(waited, 1)}
        done = minimind(lab, "resume", version, timeout=120)
        result["resume"] = {"exit": done.returncode, "out": tail(done.stdout + done.stderr, 4)}
    else:
        result["kill"] = "skipped: the run was not running past a checkpoint"
    st, waited = wait_for(lab, version, lambda s: s.get("state") not in ("running", "queued", "drafted", "lost")
                          and (s.get("analysed") or s.get("analysis_failed") or s.get("state") != "finished"),
                          args.step_timeout, poll=3.0)
    result["end"] = {"state": st.get("state"), "step": st.get("step"), "analysed": st.get("analysed"),
                     "analysis_failed": st.get("analysis_failed"), "waited_s": round(waited, 1),
                     "log_tail": (st.get("log_tail") or [])[-8:]}
    run = lab / "runs" / version
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "loss_ce" in r]
    result["metrics"] = {"train_rows": len(steps), "distinct_steps": len(set(steps)),
                         "duplicated_steps": sorted({s for s in steps if steps.count(s) > 1}),
                         "last_loss": next((r["loss_ce"] for r in reversed(rows) if "loss_ce" in r), None),
                         "tokens_per_s": next((r.get("tokens_per_s") for r in reversed(rows) if r.get("tokens_per_s")),
                                              None)}
    evals = {r["step"]: r for r in rows if "eval/val_loss" in r}
    result["periodic_val_loss"] = {str(k): v["eval/val_loss"] for k, v in sorted(evals.items())}
    eval_file = run / "eval.json"
    if eval_file.exists():
        ev = json.loads(eval_file.read_text())
        step = ev.get("step")
        periodic = evals.get(step, {}).get("eval/val_loss")
        result["periodic_vs_fresh"] = {
            "checkpoint_step": step, "checkpoint": ev.get("checkpoint"), "periodic_val_loss": periodic,
            "fresh_val_loss": ev.get("val_loss"),
            "difference": None if periodic is None or ev.get("val_loss") is None else ev["val_loss"] - periodic,
            "periodic_inference_loss": evals.get(step, {}).get("eval/inference_loss"),
            "fresh_inference_loss": ev.get("inference_loss")}
        result["eval"] = {k: ev.get(k) for k in ("val_loss", "inference_loss", "repetition_rate", "memory_entropy",
                                                  "memory_coverage", "retrieval_seconds")}
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
    result["state_json"] = {k: state.get(k) for k in ("state", "step", "total_steps", "phase", "deterministic",
                                                      "started_at", "ended_at")}


# --- 3. bench/gpu.py, shortened ------------------------------------------------------------

def bench(args) -> dict:
    argv = [sys.executable, str(REPO / "bench" / "gpu.py"), "--worker-timeout", "150"]
    argv += ["--cpu-smoke"] if args.cpu else ["--steps", "5", "--eval-docs", "16", "--max-batch", "256",
                                              "--decode-tokens", "128"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=args.step_timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if done.returncode == 0 and lines else {"failed": f"exit {done.returncode}",
                                                                          "stderr": tail(done.stderr, 8)}


# --- the driver -----------------------------------------------------------------------------

def environment() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.cuda.is_available(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        out["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    for name in ("accelerate", "deepspeed", "transformers", "GitPython"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except OSError:
        out["git_commit"] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="the JSON file (rewritten after every step)")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: prove the paths")
    p.add_argument("--micro-batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--step-timeout", type=float, default=240.0, help="seconds for each step")
    p.add_argument("--steps", default="peak,lab,bench", help="which steps, comma-separated")
    p.add_argument("--_peak", choices=["plain", "zero2"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._peak:
        print(json.dumps(peak_worker(args._peak, args.micro_batch, args.seq, args.cpu)), flush=True)
        return 0
    started = time.time()
    result: dict = {"environment": environment(), "steps": {}}
    if not result["environment"]["cuda"] and not args.cpu:
        result["skipped"] = "torch sees no CUDA device; --cpu runs the steps at a tiny size"
    wanted = [] if "skipped" in result else [s.strip() for s in args.steps.split(",") if s.strip()]

    def save():
        result["wall_s"] = round(time.time() - started, 1)
        text = json.dumps(result, indent=1)
        if args.out:
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(args.out)
        return text

    for name in wanted:
        began = time.time()
        print(f"[gpu_smoke] {name} ...", file=sys.stderr, flush=True)
        try:
            if name == "peak":
                result["steps"]["peak"] = peak(args)
            elif name == "lab":
                result["steps"]["lab"] = {}
                lab_run(args, result["steps"]["lab"])
            elif name == "bench":
                result["steps"]["bench"] = bench(args)
            else:
                result["steps"][name] = {"failed": "unknown step"}
        except Exception as exc:  # record and go on: the next step's numbers are still worth having
            entry = result["steps"].setdefault(name, {})
            entry["failed"] = f"{type(exc).__name__}: {exc}"[:500]
            entry["traceback"] = tail(traceback.format_exc(), 6)
        result["steps"][name]["seconds"] = round(time.time() - began, 1)
        save()
        print(f"[gpu_smoke] {name} done in {time.time() - began:.0f} s", file=sys.stderr, flush=True)
    print(save(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
