"""DeepSpeed ZeRO-2 on DeepSpeed's CPU accelerator, through `minimind new` like a user runs it:
one loop step is one DeepSpeed update with gradient accumulation, the losses are those of a
run without DeepSpeed, and a run killed with -9 resumes to the same final loss."""

from __future__ import annotations

import json
import os
import signal

import pytest

from lab_helpers import invoke, make_lab, metrics_steps, wait_state

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[gpu]')")

GOAL = "DeepSpeed ZeRO-2 trains like the plain trainer"
HYP = "With accumulation 4 the losses equal a run without DeepSpeed"
STEPS = 16
COMMON = ["--set", "launch.cpu=true", "--set", "accumulation_steps=4", "--set", "batch_size=4",
          "--set", f"max_steps={STEPS}", "--set", "save_interval=4", "--set", "warmup_steps=2"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from corpus.build import build

    data = tmp_path_factory.mktemp("bundled")
    build(data, "small", progress=False)
    return make_lab(tmp_path_factory.mktemp("dslab") / "lab", data, steps=STEPS)


def _rows(lab, version):
    path = lab.run_dir(version) / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip() and "loss_ce" in l]


def _start(lab, version, *extra):
    result = invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, *COMMON, *extra)
    assert result.exit_code == 0, result.output


def test_zero2_steps_and_losses_match_plain_training(lab):
    _start(lab, "0.1.0", "--set", "launch.deepspeed=zero2")
    _start(lab, "0.2.0")
    assert wait_state(lab, "0.1.0", timeout=400) == "finished"
    assert wait_state(lab, "0.2.0", timeout=400) == "finished"
    ds, plain = _rows(lab, "0.1.0"), _rows(lab, "0.2.0")
    assert [r["step"] for r in ds] == list(range(2, STEPS + 1, 2))
    # DeepSpeed's own update counter: one update per loop step (not one per micro-batch)
    assert [r["deepspeed/global_steps"] for r in ds] == [r["step"] for r in ds]
    assert "deepspeed/global_steps" not in plain[0]
    for a, b in zip(ds, plain):
        assert a["loss_ce"] == pytest.approx(b["loss_ce"], abs=1e-4), (a["step"], a["loss_ce"], b["loss_ce"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert a["lr"] == pytest.approx(b["lr"])
    used = json.loads((lab.run_dir("0.1.0") / "ds_config.json").read_text())
    assert used["gradient_accumulation_steps"] == 4 and used["train_micro_batch_size_per_gpu"] == 4
    assert used["gradient_clipping"] == 1.0 and used["zero_optimization"]["stage"] == 2
    assert used["zero_optimization"]["reduce_bucket_size"] < 5e8  # sized to the model
    assert (lab.run_dir("0.1.0") / "checkpoints" / "deepspeed" / f"step{STEPS}").is_dir()


def test_zero2_kill9_then_resume_matches_uninterrupted(lab):
    if not (lab.run_dir("0.1.0") / "metrics.jsonl").exists():
        pytest.skip("needs the uninterrupted run of the test above")
    _start(lab, "0.3.0", "--set", "launch.deepspeed=zero2")
    wait_state(lab, "0.3.0", timeout=300, predicate=lambda d, s: (s.step or 0) >= 6 and (
        lab.run_dir("0.3.0") / "checkpoints" / "last.pth").exists())
    state = json.loads((lab.run_dir("0.3.0") / "state.json").read_text())
    os.killpg(state["pgid"], signal.SIGKILL)
    assert wait_state(lab, "0.3.0", until=("lost",), timeout=60) == "lost"
    result = invoke(lab, "resume", "0.3.0")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.3.0", timeout=400) == "finished"
    assert metrics_steps(lab, "0.3.0") == list(range(2, STEPS + 1, 2))  # each step once
    resumed, straight = _rows(lab, "0.3.0"), _rows(lab, "0.1.0")
    assert [r["deepspeed/global_steps"] for r in resumed] == [r["step"] for r in resumed]
    assert resumed[-1]["loss_ce"] == pytest.approx(straight[-1]["loss_ce"], abs=1e-5)
    assert "resuming from step " in (lab.run_dir("0.3.0") / "train.log").read_text()  # not a fresh start


def test_user_zero3_json_is_refused_with_a_reason(lab):
    (lab.root / "ds3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    result = invoke(lab, "new", "0.4.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "launch.deepspeed=ds3.json",
                    "--no-launch")
    assert result.exit_code == 1 and "ZeRO stage 3" in result.output and "whole weights" in result.output
    assert not lab.run_dir("0.4.0").exists()
    (lab.root / "ds_bad.json").write_text(json.dumps({"zero_optimization": {"stage": 2},
                                                       "gradient_accumulation_steps": 8}))
    result = invoke(lab, "new", "0.4.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "accumulation_steps=4",
                    "--set", "launch.deepspeed=ds_bad.json", "--no-launch")
    assert result.exit_code == 1 and "gradient_accumulation_steps = 8" in result.output
    assert "train.accumulation_steps" in result.output
