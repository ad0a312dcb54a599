"""Whole-process timings of the CLI paths QUALITY.md names (wall time, median of runs).

    python bench/cli_timing.py [--json] [--runs 5]

- `minimind --help` and `minimind status` in a lab with 50 experiments (< 0.5 s each);
- `minimind data prepare` throughput on one core (>= 5 MB/s) and its peak memory against
  the input size (must not grow with the file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _minimind() -> list[str]:
    exe = Path(sys.executable).with_name("minimind")
    return [str(exe)] if exe.exists() else [sys.executable, str(ROOT / "cli.py")]


def _time(cmd: list[str], env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fake_lab(root: Path, count: int) -> None:
    """A lab with `count` finished experiments (state, config, eval) — what status reads."""
    from minimind.atomic import write_json
    from minimind.rundir import EVAL_FILE, EXIT_CODE_FILE, STATE_FILE
    from lifecycle.init import init_lab

    lab = init_lab(root)
    for i in range(count):
        run = lab.run_dir(f"0.{i // 10}.{i % 10}")
        run.mkdir(parents=True)
        write_json(run / STATE_FILE, {"version": run.name, "state": "running", "pid": 999999, "proc_start": 1,
                                        "step": 100, "total_steps": 100, "last_loss": 3.2, "evaluated": True})
        (run / EXIT_CODE_FILE).write_text("0\n")
        write_json(run / EVAL_FILE, {"guardrails": {"train_loss": {"value": 3.2, "level": "safe"}}})


def prepare_run(jsonl: Path, tokenizer: Path, cache: Path) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of data prepare in a child limited to one core."""
    code = ("import sys, resource, time; from corpus.prepare import prepare_pretrain; t=time.perf_counter(); "
            "prepare_pretrain(sys.argv[1], sys.argv[2], sys.argv[3], progress=False); "
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code, str(jsonl), str(tokenizer), str(cache)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="minimind-bench-"))
    try:
        fake_lab(tmp / "lab", 50)
        env = dict(os.environ, MINIMIND_LAB=str(tmp / "lab"))
        help_s = _time(_minimind() + ["--help"], env, args.runs)
        status_s = _time(_minimind() + ["status"], env, args.runs)

        from corpus.build import build

        data = tmp / "data"
        build(data, "small", progress=False)
        text = (data / "pretrain.jsonl").read_bytes()
        small, large = tmp / "small.jsonl", tmp / "large.jsonl"
        small.write_bytes(text * 10)
        large.write_bytes(text * 40)
        small_s, small_rss = prepare_run(small, data / "tokenizer.json", tmp / "cache")
        large_s, large_rss = prepare_run(large, data / "tokenizer.json", tmp / "cache")
        mb = large.stat().st_size / 1e6
        result = {
            "help_s": round(help_s, 3), "help_target_s": 0.5,
            "status_50_s": round(status_s, 3), "status_target_s": 0.5,
            "prepare_mb_per_s_one_core": round(mb / large_s, 2), "prepare_target_mb_per_s": 5.0,
            "prepare_input_mb": [round(small.stat().st_size / 1e6, 1), round(mb, 1)],
            "prepare_peak_rss_mib": [round(small_rss / 1024), round(large_rss / 1024)],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
