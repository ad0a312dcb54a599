"""GPU slots on one machine (lifecycle/running/slots.py): on CPU, `launch.gpus: [0, 1]` gives two plain
numbered slots, so the queue is tested here exactly as it runs on a GPU box."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lab_helpers import invoke, make_lab, wait_state
from test_lifecycle import GOAL, HYP

from minimind.rundir import current, read_state


@pytest.fixture
def slot_lab(tmp_path, bundled_data):  # noqa: F811
    lab = make_lab(tmp_path / "lab", bundled_data)
    settings = lab.root / "minimind.yaml"
    settings.write_text(settings.read_text().replace("launch:\n", "launch:\n  gpus: [0, 1]\n"))
    return lab


def _new(lab, version, steps, epochs=1):
    # max_steps is only a cap: the runs that must outlive the test's waits also get the epochs to reach it.
    result = invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--set", f"max_steps={steps}",
                    "--set", f"epochs={epochs}", "--set", "save_interval=5")
    assert result.exit_code == 0, result.output
    return result


def _running_with_slot(lab, version, timeout=60.0):
    return wait_state(lab, version, timeout=timeout,
                      predicate=lambda d, s: d in ("running", "finished") and s.gpus is not None)


def test_three_runs_two_slots_queue_in_order(slot_lab):
    lab = slot_lab
    _new(lab, "1.0.0", 5000, epochs=100)
    _new(lab, "1.0.1", 5000, epochs=100)
    _new(lab, "1.0.2", 12)
    _running_with_slot(lab, "1.0.0")
    _running_with_slot(lab, "1.0.1")
    assert sorted(read_state(lab.run_dir("1.0.0")).gpus + read_state(lab.run_dir("1.0.1")).gpus) == [0, 1]

    # The third waits, queued first in line, for one of the two slots the others hold.
    wait_state(lab, "1.0.2", predicate=lambda d, s: d == "queued" and s.waiting_for is not None, timeout=30)
    derived, state = current(lab.run_dir("1.0.2"))
    assert (derived, state.queue_position, state.gpus) == ("queued", 1, None)
    assert "1 free GPU slot(s) of 2" in state.waiting_for and "1.0.0" in state.waiting_for

    # A fourth queues behind it; stop takes it out of the queue without ever starting it.
    _new(lab, "1.0.3", 12)
    wait_state(lab, "1.0.3", predicate=lambda d, s: d == "queued" and s.queue_position == 2, timeout=30)
    assert "1.0.2" in read_state(lab.run_dir("1.0.3")).waiting_for
    rows = {r["version"]: r for r in json.loads(invoke(lab, "status", "--json").output)}
    assert rows["1.0.3"]["state"] == "queued" and rows["1.0.3"]["queue_position"] == 2
    assert rows["1.0.0"]["gpus"] in ([0], [1]) and rows["1.0.2"]["waiting_for"]
    table = invoke(lab, "status", env={"COLUMNS": "250"}).output
    assert "#2, waits for" in table and "GPU " in table
    stopped = invoke(lab, "stop", "1.0.3")
    assert stopped.exit_code == 0 and "removed from the queue" in stopped.output, stopped.output
    derived, state = current(lab.run_dir("1.0.3"))
    assert derived == "stopped" and state.stop_reason == "stopped while queued; it never started"
    assert state.trainer_pid is None and state.step == 0 and state.gpus is None
    assert not (lab.run_dir("1.0.3") / "metrics.jsonl").exists()

    # When one ends (a graceful stop), the queued run takes its slot and runs to the end.
    freed = read_state(lab.run_dir("1.0.1")).gpus
    assert invoke(lab, "stop", "1.0.1").exit_code == 0
    _running_with_slot(lab, "1.0.2", timeout=60)
    assert read_state(lab.run_dir("1.0.2")).gpus == freed
    assert "CUDA_VISIBLE_DEVICES=" + str(freed[0]) in (lab.run_dir("1.0.2") / "train.log").read_text()
    assert wait_state(lab, "1.0.2") == "finished"

    # kill -9 of a running run's process group frees its slot within seconds.
    _new(lab, "1.0.4", 12)
    _running_with_slot(lab, "1.0.4", timeout=60)  # 1.0.2's slot, released when it finished
    _new(lab, "1.0.5", 12)
    wait_state(lab, "1.0.5", until=("queued",), timeout=30)
    victim = read_state(lab.run_dir("1.0.0"))
    os.killpg(victim.pgid, signal.SIGKILL)
    t0 = time.time()
    _running_with_slot(lab, "1.0.5", timeout=30)
    assert time.time() - t0 < 10
    assert read_state(lab.run_dir("1.0.5")).gpus == victim.gpus
    assert current(lab.run_dir("1.0.0"))[0] == "lost"
    for version in ("1.0.4", "1.0.5"):
        assert wait_state(lab, version) == "finished"


def test_more_processes_than_slots_refused(slot_lab):
    result = invoke(slot_lab, "new", "2.0.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "launch.num_processes=3")
    assert result.exit_code == 2 and "launch.num_processes is 3" in result.output
    assert not slot_lab.run_dir("2.0.0").exists()


def test_usr1_checkpoints_and_stops(tmp_path, bundled_data):  # noqa: F811
    """SIGUSR1 (Slurm: the time limit is near) to the pipeline: the trainer checkpoints and stops."""
    lab = make_lab(tmp_path / "lab", bundled_data)
    _new(lab, "3.0.0", 5000)
    wait_state(lab, "3.0.0", predicate=lambda d, s: (s.step or 0) >= 4)
    os.kill(read_state(lab.run_dir("3.0.0")).pid, signal.SIGUSR1)
    # The trainer records `stopped` first; the pipeline's reason follows, before its exit code.
    wait_state(lab, "3.0.0", predicate=lambda d, s: (lab.run_dir("3.0.0") / "exit_code").exists())
    assert current(lab.run_dir("3.0.0"))[0] == "stopped"
    state = read_state(lab.run_dir("3.0.0"))
    assert state.stop_reason.startswith("Slurm time limit near: stopped at its last checkpoint")
    assert (lab.run_dir("3.0.0") / "checkpoints" / "last.pth").exists()
