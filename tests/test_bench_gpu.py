"""bench/gpu.py: without CUDA one JSON saying so; --cpu-smoke runs every measurement at a
tiny size on the CPU; the largest-batch search and the card table are right."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    # The timeout only guards against a hang: the smoke run takes about 40 s on an idle 2-core
    # machine and several times that when the machine is shared.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # one JSON, nothing else on stdout
    return json.loads(lines[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA answer needs a machine without CUDA")
def test_without_cuda_one_json_and_exit_0():
    out = _run()
    assert out["cuda"] is False and "no CUDA" in out["reason"]


def test_cpu_smoke_runs_every_measurement():
    out = _run("--cpu-smoke", "--budget-gb", "0.05")
    assert out["smoke"] is True
    for preset in ("memory", "original"):
        train = out["train"][preset]
        assert train["tokens_per_s"] > 0 and train["params"] > 0 and train["estimated_bytes"] > 0
    assert out["largest_batch"]["largest_micro_batch"] >= 1
    assert out["largest_batch"]["trainer_step_loss"] > 0  # one step through the trainer's own path
    assert out["decode"]["new_tokens"] > 0 and out["decode"]["tokens_per_s"] > 0
    assert out["eval"]["device_s"] > 0 and out["eval"]["cpu_s"] > 0
    assert out["eval"]["device_val_loss"] == pytest.approx(out["eval"]["cpu_val_loss"], rel=1e-5)
    assert out["backends"]["plain"]["tokens_per_s"] > 0
    if importlib.util.find_spec("deepspeed"):
        assert out["backends"]["zero2"]["distributed_type"] == "DEEPSPEED", out["backends"]
        assert out["backends"]["zero2_vs_plain"] > 0
    else:
        assert "not installed" in out["backends"]["zero2"]["skipped"]


def test_largest_batch_search_and_peak_table():
    bench = load()
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 37

    assert bench.search_largest(fits, 512) == 37 and len(calls) <= 14
    assert bench.search_largest(lambda n: True, 100) == 100
    assert bench.search_largest(lambda n: False, 100) == 0
    assert bench.peak_tflops("NVIDIA GeForce RTX 4090", None) == (165.0, "table (RTX 4090)")
    assert bench.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert bench.peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert bench.peak_tflops("Some Card", 42.0) == (42.0, "--peak-tflops")
    assert bench.peak_tflops("Some Card", None)[0] is None
