"""bench/gpu_smoke.sh and bench/gpu_smoke.py: the GPU check's paths stay working on the CPU.

The whole `--cpu` run (peak, lab with kill -9 and resume, bench/gpu.py) takes minutes, so the
suite runs its parts: the shell script's arguments, the trainer-path peak worker in this
process, and the driver's step bookkeeping (a failing step is recorded, the next one runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_smoke  # noqa: E402


def test_script_parses_and_refuses_an_unknown_step():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_smoke.sh")]).returncode == 0
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh"), "launch"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bench/gpu_smoke.sh prepare" in done.stderr


def test_run_without_wheels_says_to_prepare(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh"), "run", str(tmp_path)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 2 and "run bench/gpu_smoke.sh prepare first" in done.stderr


def test_peak_worker_trains_through_the_trainer_path_and_reports_the_plan():
    out = gpu_smoke.peak_worker("plain", 2, 64, cpu=True)
    assert "failed" not in out, out
    assert out["distributed_type"] == "NO" and out["logits_dtype"] == "float32"  # fp32 run: no autocast
    assert out["plan_bytes"]["total"] > 0 and out["tokens_per_s"] > 0
    assert out["loss"] == out["loss"]  # finite, not NaN


def test_a_failing_step_is_recorded_and_the_json_written(tmp_path, monkeypatch):
    def boom(args):
        raise RuntimeError("no device here")

    monkeypatch.setattr(gpu_smoke, "peak", boom)
    out = tmp_path / "smoke.json"
    assert gpu_smoke.main(["--cpu", "--steps", "peak,nosuch", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps"]["peak"]["failed"] == "RuntimeError: no device here"
    assert result["steps"]["nosuch"]["failed"] == "unknown step"
    assert result["environment"]["torch"]
