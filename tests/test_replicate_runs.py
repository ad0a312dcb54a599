"""Replicates under GPU slots, and the loss of one (issue 22, Must show 4 and 5): with 2 slots and
3 replicates two train at once and the third waits `queued`; `kill -9` of one replicate shows it
`lost`, `resume` continues it alone from its checkpoint, and the experiment is analysed once and
committed once. On CPU `launch.gpus: [0, 1]` gives two plain numbered slots (tests/test_slots.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from lab_helpers import invoke, make_lab

HYP = "A dense model lowers inference loss"


def _status(lab, version: str) -> dict:
    result = invoke(lab, "status", version, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _until(lab, version: str, test, timeout: float = 240.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _status(lab, version)
        if test(info):
            return info
        time.sleep(0.3)
    raise AssertionError(f"{version}: {json.dumps(_status(lab, version)['replicates'], indent=1)}")


def test_two_slots_three_replicates_kill_one_and_resume_it_alone(tmp_path, bundled_data):
    lab = make_lab(tmp_path / "lab", bundled_data)
    settings = lab.root / "minimind.yaml"
    settings.write_text(settings.read_text().replace("launch:\n", "launch:\n  gpus: [0, 1]\n"))
    result = invoke(lab, "new", "0.2.0", "--goal", "Baseline", "--hypothesis", HYP, "--seeds", "3",
                    "--set", "max_steps=400", "--set", "save_interval=5")
    assert result.exit_code == 0, result.output

    # Must show 4: two replicates hold the two slots, the third waits queued.
    info = _until(lab, "0.2.0", lambda i: [r["state"] for r in i["replicates"]].count("running") == 2
                  and all(r["gpus"] for r in i["replicates"] if r["state"] == "running"))
    reps = info["replicates"]
    running = [r for r in reps if r["state"] == "running"]
    queued = [r for r in reps if r["state"] == "queued"]
    # (which of the three waits is whichever pipeline reached the slots last: they start together)
    assert len(queued) == 1, reps
    assert sorted(g for r in running for g in r["gpus"]) == [0, 1]
    assert "free GPU slot(s) of 2" in queued[0]["waiting_for"]
    assert info["state"] == "running" and info["state_words"] == "0 of 3 done"

    # Must show 5: kill -9 of one replicate's process group; it is lost, the queued one takes its slot.
    at = next(k for k, r in enumerate(reps) if r["state"] == "running" and "@" in r["label"])
    waiting = reps.index(queued[0])
    seed = reps[at]["seed"]
    victim = lab.run_dir("0.2.0") / "seeds" / str(seed)
    _until(lab, "0.2.0", lambda i: (victim / "checkpoints" / "last.pth").exists()
           and (i["replicates"][at]["step"] or 0) >= 6)
    pgid = json.loads((victim / "state.json").read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    info = _until(lab, "0.2.0", lambda i: i["replicates"][at]["state"] == "lost"
                  and i["replicates"][waiting]["state"] == "running", timeout=60)
    assert [r["state"] for r in info["replicates"]].count("running") == 2
    table = invoke(lab, "status", env={"COLUMNS": "250"}).output
    assert f"0.2.0@{seed} (seed {seed}): lost" in table

    # resume continues the lost one alone, from its checkpoint; the others are untouched
    result = invoke(lab, "resume", "0.2.0")
    assert result.exit_code == 0, result.output
    assert f"Resumed experiment 0.2.0@{seed} from its last checkpoint" in result.output
    assert result.output.count("Resumed experiment") == 1
    info = _until(lab, "0.2.0", lambda i: i["state"] == "finished" and i["analysed"], timeout=400)
    assert [r["state"] for r in info["replicates"]] == ["finished"] * 3
    log = (victim / "train.log").read_text()
    assert "resum" in log.lower()
    logs = [(d / "train.log").read_text() for d in (lab.run_dir("0.2.0"), *sorted(victim.parent.glob("4*")))]
    assert sum(text.count("analysed the experiment: record") for text in logs) == 1
    assert invoke(lab, "review", "0.2.0", "--approve").exit_code == 0
    assert invoke(lab, "commit", "0.2.0").exit_code == 0
    subjects = subprocess.run(["git", "log", "--format=%s", "--", "runs/0.2.0"], cwd=lab.root, capture_output=True,
                              text=True).stdout.splitlines()
    assert len(subjects) == 1


def test_stop_of_a_replicated_experiment_stops_every_replicate(tmp_path, bundled_data):
    """One device, no slots: the second replicate waits its turn; `stop V` ends both (the waiting one
    leaves the queue without starting); `stop V@SEED` names one."""
    lab = make_lab(tmp_path / "lab", bundled_data)
    result = invoke(lab, "new", "0.3.0", "--goal", "Baseline", "--hypothesis", HYP, "--seeds", "2",
                    "--set", "max_steps=5000", "--set", "epochs=100")
    assert result.exit_code == 0, result.output
    info = _until(lab, "0.3.0", lambda i: [r["state"] for r in i["replicates"]] == ["running", "queued"]
                  and (i["replicates"][0]["step"] or 0) >= 2 and i["replicates"][1]["waiting_for"], timeout=120)
    assert "one device: replicates train one at a time" in info["replicates"][1]["waiting_for"]
    bad = invoke(lab, "stop", "0.3.0@99")
    assert bad.exit_code != 0 and "no replicate with seed 99" in bad.output
    result = invoke(lab, "stop", "0.3.0")
    assert result.exit_code == 0, result.output
    assert "Experiment 0.3.0@43: stopped, removed from the queue before it started" in result.output
    assert "Experiment 0.3.0: stopped at step" in result.output
    info = _status(lab, "0.3.0")
    assert info["state"] == "stopped" and [r["state"] for r in info["replicates"]] == ["stopped", "stopped"]
    assert invoke(lab, "stop", "0.3.0").exit_code != 0


def test_a_lab_made_before_replicates_keeps_their_checkpoints_and_state_out_of_git(tmp_path, bundled_data):
    """A lab made by an older version has a .gitignore that knows runs/V/ only: a replicate's
    checkpoints and state.json under runs/V/seeds/S/ showed as untracked, one `git add -A` away
    from the lab's history. Making replicates brings the lab's .gitignore up to date (the lab's
    own lines kept)."""
    lab = make_lab(tmp_path / "lab", bundled_data, steps=4)
    old = [line for line in (lab.root / ".gitignore").read_text().splitlines() if "/seeds/" not in line]
    (lab.root / ".gitignore").write_text("\n".join(old + ["my-notes/"]) + "\n")
    result = invoke(lab, "new", "0.1.0", "--goal", "g", "--hypothesis", "h", "--seeds", "2", "--no-launch")
    assert result.exit_code == 0, result.output
    seed = next((lab.run_dir("0.1.0") / "seeds").iterdir())
    (seed / "checkpoints").mkdir()
    (seed / "checkpoints" / "last.pth").write_bytes(b"weights")
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=lab.root,
                               capture_output=True, text=True, check=True).stdout
    assert "checkpoints" not in untracked and "seeds/" in untracked and "state.json" not in untracked, untracked
    assert "my-notes/" in (lab.root / ".gitignore").read_text()
