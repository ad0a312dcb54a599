"""A tiny lab for lifecycle tests: small model, few steps, the bundled small data built once."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from click.testing import CliRunner

TINY_SETTINGS = """\
model:
  preset: original
  dim: 32
  n_layers: 2
  n_heads: 2
  n_kv_heads: 1
  max_seq_len: 64
  knowledge_num: 256
  knowledge_length: 8
  knowledge_dim: 16
  num_candidates: 8
train:
  batch_size: 8
  learning_rate: 0.003
  warmup_steps: 2
  max_steps: {steps}
  log_interval: 2
  eval_interval: 0
  save_interval: 5
eval:
  num_samples: 3
  max_new_tokens: 8
  max_val_batches: 2
launch:
  threads: 1
swanlab:
  mode: disabled
agent:
  backend: offline
"""


SFT_FILES = ("sft.jsonl", "sft_eval.jsonl", "sft_split.json")


def isolate(monkeypatch) -> None:
    """No developer's API key, lab or git identity: every test has it (conftest), and a
    module-scoped fixture that trains a lab once applies it with pytest.MonkeyPatch.context()."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "MINIMIND_LAB", "MINIMIND_AGENT_MODEL",
                 "MINIMIND_AGENT_BACKEND", "MINIMIND_AGENT_MAX_USD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Researcher")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "researcher@example.org")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


def make_lab(root: Path, data_dir: Path, steps: int = 12, sft: bool = False):
    """A lab with the bundled pretraining data; `sft` adds the conversations (and with them chat QA at eval)."""
    from lifecycle.init import init_lab

    lab = init_lab(root, TINY_SETTINGS.format(steps=steps))
    for name in ("pretrain.jsonl", "knowledge.json", "probes.json", "tokenizer.json") + (SFT_FILES if sft else ()):
        shutil.copyfile(data_dir / name, lab.data_dir / name)
    return lab


def invoke(lab, *args, env=None):
    """Run the CLI in-process inside `lab`; returns the click Result."""
    import cli

    runner = CliRunner()
    return runner.invoke(cli.main, list(args), env={"MINIMIND_LAB": str(lab.root), **(env or {})}, catch_exceptions=False)


def wait_state(lab, version: str, until=("finished", "failed", "stopped", "guardrail_stopped", "lost"), timeout=240.0,
               predicate=None) -> str:
    from minimind.rundir import current

    deadline = time.time() + timeout
    while time.time() < deadline:
        derived, state = current(lab.run_dir(version))
        if predicate is not None:
            if predicate(derived, state):
                return derived
        elif derived in until:
            return derived
        time.sleep(0.3)
    log = lab.run_dir(version) / "train.log"
    raise AssertionError(f"{version} still {current(lab.run_dir(version))[0]} after {timeout}s:\n"
                         + (log.read_text()[-3000:] if log.exists() else "no log"))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under the lab except .git internals: to prove a failed command changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def metrics_steps(lab, version: str) -> list[int]:
    rows = [json.loads(l) for l in (lab.run_dir(version) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r["step"] for r in rows if "loss" in r]
