"""Two gloo processes through `minimind new`, with accumulation 2: identical weights and bank
on both ranks at every save, `minimind stop` checkpoints both ranks at one step within 30 s,
and the resumed run ends exactly where an uninterrupted one does. Also two launchers, one per
machine_rank, on localhost: a 2-"node" run trains and finishes."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
import torch

from lab_helpers import invoke, make_lab, metrics_steps, wait_state

GOAL = "Two processes train as one"
HYP = "Accumulation 2 over two ranks resumes exactly after a stop"
STEPS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from corpus.build import build

    data = tmp_path_factory.mktemp("bundled")
    build(data, "small", progress=False)
    return make_lab(tmp_path_factory.mktemp("mplab") / "lab", data, steps=STEPS)


def _new(lab, version, *extra):
    result = invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--set", "launch.cpu=true",
                    "--set", "launch.num_processes=2", "--set", f"launch.main_process_port={free_port()}",
                    "--set", "accumulation_steps=2", "--set", "batch_size=4", "--set", "save_interval=4",
                    "--set", "preset=memory", "--set", "ema_update_freq=1", *extra)
    assert result.exit_code == 0, result.output
    return result


def _rows(lab, version):
    return [json.loads(l) for l in (lab.run_dir(version) / "metrics.jsonl").read_text().splitlines()
            if l.strip() and "loss_ce" in l]


def _both_ranks_agree(run_dir):
    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    other = torch.load(run_dir / "checkpoints" / f"rank1.{last['tag']}.pth", weights_only=True)
    assert last["num_processes"] == 2 and last["state_digest"] == other["state_digest"]
    return last


def test_two_processes_stop_and_resume_exactly(lab):
    _new(lab, "0.1.0")
    _new(lab, "0.2.0")
    wait_state(lab, "0.2.0", timeout=300, predicate=lambda d, s: (s.step or 0) >= 6)
    t0 = time.time()
    result = invoke(lab, "stop", "0.2.0")
    assert result.exit_code == 0, result.output
    assert time.time() - t0 < 30
    assert wait_state(lab, "0.2.0") == "stopped"
    stopped = _both_ranks_agree(lab.run_dir("0.2.0"))  # both ranks saved, at one step, with equal weights
    assert stopped["step"] < STEPS and not list((lab.run_dir("0.2.0") / "checkpoints").glob("rank1.*"))[1:]
    assert wait_state(lab, "0.1.0", timeout=400) == "finished"
    _both_ranks_agree(lab.run_dir("0.1.0"))
    result = invoke(lab, "resume", "0.2.0")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.2.0", timeout=400) == "finished"
    assert metrics_steps(lab, "0.2.0") == list(range(2, STEPS + 1, 2))
    resumed, straight = _rows(lab, "0.2.0"), _rows(lab, "0.1.0")
    for a, b in zip(resumed, straight):
        assert a["loss_ce"] == pytest.approx(b["loss_ce"], abs=1e-5), a["step"]
        if a["step"] > stopped["step"] + 2:  # the statistics window is not checkpointed: compare full windows
            for key in ("memory/candidate_entropy", "memory/selection_entropy"):  # selection: when a full window was seen
                assert (key in a) == (key in b) and a.get(key) == pytest.approx(b.get(key), abs=1e-5), (key, a["step"])
    one, two = (torch.load(lab.run_dir(v) / "checkpoints" / "last.pth", weights_only=True) for v in ("0.1.0", "0.2.0"))
    assert torch.equal(one["model"]["memory_bank"], two["model"]["memory_bank"])


def test_resume_with_another_process_count_is_refused(lab):
    run_dir = lab.run_dir("0.1.0")
    if not (run_dir / "checkpoints" / "last.pth").exists():
        pytest.skip("needs the finished run of the test above")
    from minimind.config import dump_config, load_config

    cfg = load_config(run_dir / "config.yaml").to_dict()
    cfg["launch"]["num_processes"] = 1
    cfg["train"]["max_steps"] = STEPS + 2
    from minimind.config import from_dict

    (run_dir / "config.yaml").write_text(dump_config(from_dict(cfg)))
    proc = subprocess.run([__import__("sys").executable, "-m", "training.train", "--run-dir", str(run_dir), "--resume"],
                          cwd=lab.root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "written by 2 process(es) and this resume has 1" in proc.stderr
