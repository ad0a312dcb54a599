"""Shared fixtures for the training, evaluation and guardrail tests: a tiny lab.

The bundled `small` data is built once per test session (seconds) and linked into each
lab; models are tiny (dim 32, 2 layers, a 64-entry bank) so a run takes seconds on CPU.
Training runs as a subprocess in its own session (so a test can signal its whole
process group) with one thread per process and a hard timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MODULE = "model_0_1_0"

TINY_MODEL: dict[str, Any] = {
    "preset": "memory", "dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 6400,
    "max_seq_len": 96, "knowledge_num": 64, "knowledge_length": 8, "knowledge_dim": 16, "num_candidates": 4,
    "ema_update_freq": 2,
}
TINY_TRAIN: dict[str, Any] = {
    "epochs": 1, "batch_size": 8, "accumulation_steps": 1, "learning_rate": 3e-3, "warmup_steps": 2,
    "max_steps": 30, "log_interval": 2, "eval_interval": 10, "save_interval": 5, "seed": 7,
}
TINY_EVAL: dict[str, Any] = {"num_samples": 3, "prompt_tokens": 12, "max_new_tokens": 8, "max_val_batches": 2}


def env(threads: int = 1) -> dict[str, str]:
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1", SWANLAB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    out.pop("SWANLAB_API_KEY", None)
    return out


def build_data(out_dir: Path) -> Path:
    """The bundled small corpus, built in-process (deterministic, a few seconds)."""
    from corpus.build import build

    build(out_dir, "small", progress=False)
    return out_dir


def make_lab(root: Path, data_dir: Path) -> Path:
    """A lab folder: minimind.yaml, models/ (living model + snapshot), data/ (copied files)."""
    from minimind.settings import LabSettings, dump_settings

    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    shutil.copyfile(REPO / "models" / "model.py", root / "models" / "model.py")
    shutil.copyfile(REPO / "models" / "model.py", root / "models" / f"{MODULE}.py")
    (root / "minimind.yaml").write_text(dump_settings(LabSettings()), encoding="utf-8")
    data = root / "data"
    data.mkdir(exist_ok=True)
    for name in ("pretrain.jsonl", "knowledge.json", "probes.json", "tokenizer.json"):
        shutil.copyfile(data_dir / name, data / name)
    return root


def write_config(lab: Path, version: str = "0.1.0", model: Optional[dict] = None, train: Optional[dict] = None,
                 eval: Optional[dict] = None, guardrails: Optional[dict] = None, launch: Optional[dict] = None,
                 swanlab: Optional[dict] = None) -> Path:
    """runs/V/config.yaml, validated through minimind.config like the real thing."""
    from minimind.config import from_dict

    cfg = {
        "version": version, "base": None, "model_module": MODULE,
        "model": {**TINY_MODEL, **(model or {})},
        "train": {**TINY_TRAIN, **(train or {})},
        "eval": {**TINY_EVAL, **(eval or {})},
        "launch": {"cpu": True, "threads": 1, **(launch or {})},
        "swanlab": {"mode": "disabled", **(swanlab or {})},
    }
    if guardrails:
        cfg["guardrails"] = guardrails
    cfg = from_dict(cfg).to_dict()  # fully resolved, as the lifecycle writes it
    run_dir = lab / "runs" / version
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return run_dir


def train_cmd(run_dir: Path, *extra: str, launcher: Optional[list[str]] = None) -> list[str]:
    if launcher:
        return [*launcher, "-m", "training.train", "--run-dir", str(run_dir), *extra]
    return [PY, "-m", "training.train", "--run-dir", str(run_dir), *extra]


def start_train(run_dir: Path, *extra: str, launcher: Optional[list[str]] = None, threads: int = 1) -> subprocess.Popen:
    log = open(run_dir / "train.log", "a")
    return subprocess.Popen(train_cmd(run_dir, *extra, launcher=launcher), cwd=REPO, env=env(threads),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_train(run_dir: Path, *extra: str, timeout: float = 120, launcher: Optional[list[str]] = None) -> int:
    proc = start_train(run_dir, *extra, launcher=launcher)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"training did not finish in {timeout}s:\n{tail(run_dir / 'train.log')}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in metrics(run_dir) if "loss_ce" in r]


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


# One build of the data and one finished 30-step run per test session, shared by every
# test module that asks (pytest would run a session fixture once per defining module).
_SHARED: dict[str, Path] = {}


def shared_data(factory) -> Path:
    if "data" not in _SHARED:
        _SHARED["data"] = build_data(factory.mktemp("data"))
    return _SHARED["data"]


def shared_finished_run(factory) -> Path:
    if "run" not in _SHARED:
        lab = make_lab(factory.mktemp("lab"), shared_data(factory))
        run_dir = write_config(lab)
        rc = run_train(run_dir, timeout=150)
        assert rc == 0, tail(run_dir / "train.log")
        _SHARED["run"] = run_dir
    return _SHARED["run"]
