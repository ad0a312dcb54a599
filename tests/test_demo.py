"""`minimind demo` (the README's main command) runs the whole loop and commits its four experiments
(two pretraining, an SFT of each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_loop(tmp_path):
    target = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "demo", str(target), "--steps", "20",
                          "--set", "eval.chat_probes=12", "--sft-set", "learning_rate=0.001"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import yaml

    configs = {v: yaml.safe_load((target / "runs" / v / "config.yaml").read_text()) for v in ("0.1.0", "0.1.2")}
    # --set reaches every experiment (eval is lab policy, not inherited from the base), --sft-set only the SFT ones
    assert configs["0.1.0"]["eval"]["chat_probes"] == configs["0.1.2"]["eval"]["chat_probes"] == 12
    assert configs["0.1.0"]["train"]["learning_rate"] == 0.002 and configs["0.1.2"]["train"]["learning_rate"] == 0.001
    for text in ("0.1.0: finished", "0.1.1: finished", "0.1.2: finished", "0.1.3: finished",
                 "Committed experiment 0.1.0", "Committed experiment 0.1.1", "Committed experiment 0.1.2",
                 "Committed experiment 0.1.3", "Config differences", "model.preset", "hypothesis",
                 "0.1.2: sft, pretrain base 0.1.1", "0.1.3: sft, pretrain base 0.1.0", "chat_qa.taught.accuracy"):
        assert text in out.stdout, text
    log = subprocess.run(["git", "log", "--format=%s"], cwd=target, capture_output=True, text=True).stdout
    for line, version in zip(log.splitlines(), ["0.1.3", "0.1.2", "0.1.1", "0.1.0"]):
        assert line.startswith(f"Experiment {version}"), log
    assert (target / "runs" / "0.1.1" / "plots" / "loss.png").exists()
    # the notebook: both experiments with verdicts and intervals, committed with each experiment
    history = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "history", "--json"],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MINIMIND_LAB": str(target)})
    rows = {r["version"]: r for r in json.loads(history.stdout)}
    assert set(rows) == {"0.1.0", "0.1.1", "0.1.2", "0.1.3"}
    assert all(r["verdict"] in ("supported", "refuted", "inconclusive") and r["interval"] for r in rows.values()), rows
    assert "$ minimind history" in out.stdout and "lab notebook" in out.stdout
    index = subprocess.run(["git", "show", "HEAD:experiment/INDEX.md"], cwd=target, capture_output=True, text=True).stdout
    assert all(f"[{v}](experiment_{v}.md)" in index for v in rows), index
    # the first experiment's commit brings the notebook (later commits only when a row changed)
    first = subprocess.run(["git", "show", "--name-only", "--format=", f"HEAD~{len(rows) - 1}"], cwd=target,
                           capture_output=True, text=True).stdout.split()
    assert "experiment/INDEX.md" in first
    # an SFT row cites the metric its verdict was decided on, with that metric's interval
    assert "chat_qa.taught.accuracy" in rows["0.1.2"]["interval"] and "CI [" in rows["0.1.2"]["interval"], rows["0.1.2"]


def test_demo_refuses_a_bad_set_before_it_builds_or_trains(tmp_path):
    target = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "demo", str(target),
                          "--sft-set", "learning_rate=fast"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == "Error: train.learning_rate: expected a number, got 'fast'"
    assert not (target / "data" / "pretrain.jsonl").exists() and not [p for p in (target / "runs").iterdir() if p.name != ".gitkeep"]


def test_demo_compute_gate_names_the_demos_own_flag_and_keeps_the_lab(tmp_path):
    """SFT 20× longer than its 20-step base passes preflight.compute_factor: refused with the demo's advice (exit 3)."""
    target = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "demo", str(target),
                          "--steps", "20", "--sft-steps", "400"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: training FLOPs") and "preflight.compute_factor" in error, error
    assert error.endswith(f"Run the demo again with --yes (the lab {target} keeps what finished)"), error
    assert "--no-launch" not in error
    # the pretraining experiments that finished are kept; the refused SFT left nothing behind
    assert (target / "runs" / "0.1.1" / "eval.json").exists() and not (target / "runs" / "0.1.2").exists()
