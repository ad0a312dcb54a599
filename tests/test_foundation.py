"""Settings validation, lab discovery, versions, --set parsing, run-state derivation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minimind import versions
from minimind.config import apply_sets, diff, parse_assignment, parse_value, resolve_key
from minimind.errors import MinimindError, UsageError
from lifecycle.init import init_lab
from minimind.lab import find_lab
from minimind.settings import load_settings
from minimind.rundir import RunState, derive_state, is_alive, process_start_time, read_state, update_state

MODEL_FIELDS = {"dim": {"type": "int", "min": 8, "max": 8192}, "preset": {"type": "str", "choices": ["original", "memory"]},
                "knowledge_num": {"type": "int", "min": 4, "max": 2**26}}


@pytest.mark.parametrize("bad", ["1.4", "1.4.8.1", "../1.4.8", "1.4.8; rm -rf x", "01.4.8", "1.-4.8", "", "a.b.c", "1.4.8\n"])
def test_malformed_versions_refused(bad):
    with pytest.raises(UsageError, match="invalid version"):
        versions.parse(bad)


def test_version_order_and_default_base():
    assert versions.sorted_versions(["1.10.0", "1.4.8", "1.4.10", "0.9.9"]) == ["0.9.9", "1.4.8", "1.4.10", "1.10.0"]
    assert versions.default_base("1.4.9", ["1.4.7", "1.4.8", "1.5.0"]) == "1.4.8"
    assert versions.default_base("0.1.0", ["1.0.0"]) is None
    assert versions.module_name("1.4.8") == "model_1_4_8"


def test_settings_unknown_key_and_bad_value(tmp_path):
    path = tmp_path / "minimind.yaml"
    path.write_text("train:\n  bach_size: 8\n")
    with pytest.raises(MinimindError, match="unknown key train.bach_size"):
        load_settings(path)
    path.write_text("train:\n  batch_size: -1\n")
    with pytest.raises(MinimindError, match="train.batch_size: must be >= 1"):
        load_settings(path)
    path.write_text("swanlab:\n  mode: online\n")
    with pytest.raises(MinimindError, match="swanlab.mode"):
        load_settings(path)
    path.write_text("guardrails:\n  train_loss: {safe: 0.5, danger: 0.1, action: explode}\n")
    with pytest.raises(MinimindError, match="guardrails.train_loss.action"):
        load_settings(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(MinimindError, match="not valid YAML"):
        load_settings(path)
    path.write_text("train:\n  batch_size: 8\nguardrails:\n  train_loss: {safe: 0.6, danger: 0.2, action: stop}\n")
    settings = load_settings(path)
    assert settings.train.batch_size == 8 and settings.guardrails.train_loss.danger == 0.2
    assert settings.swanlab.mode == "disabled"


def test_init_and_discovery(tmp_path, monkeypatch):
    lab = init_lab(tmp_path / "lab")
    for sub in ("models/model.py", "minimind.yaml", ".gitignore", "templates/record.md.j2", "experiment", "runs"):
        assert (lab.root / sub).exists(), sub
    import git

    repo = git.Repo(lab.root)
    assert repo.active_branch.name == "main"
    assert repo.head.commit.author.email == "researcher@example.org"
    deep = lab.root / "runs" / "x"
    deep.mkdir()
    monkeypatch.chdir(deep)
    assert find_lab().root == lab.root
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MinimindError, match="not inside a lab"):
        find_lab()
    monkeypatch.setenv("MINIMIND_LAB", str(lab.root))
    assert find_lab().root == lab.root
    monkeypatch.setenv("MINIMIND_LAB", str(tmp_path))
    with pytest.raises(MinimindError, match="is not a lab"):
        find_lab()
    with pytest.raises(MinimindError, match="already a lab"):
        init_lab(lab.root)


def test_a_run_directory_knows_its_lab(tmp_path, monkeypatch):
    from minimind.lab import Lab

    lab = Lab(tmp_path.resolve())
    assert Lab.of_run(lab.run_dir("0.1.0")) == lab
    monkeypatch.chdir(tmp_path)
    assert Lab.of_run(Path("runs") / "0.1.0") == lab  # a relative run directory: the lab stays absolute


def test_set_parsing_and_resolution():
    assert parse_assignment("train.batch_size=8") == ("train.batch_size", "8")
    with pytest.raises(UsageError):
        parse_assignment("batch_size")
    assert parse_value("1e-4") == pytest.approx(1e-4)
    assert parse_value("8") == 8 and parse_value("true") is True and parse_value("memory") == "memory"
    assert resolve_key("dim", MODEL_FIELDS) == ("model", "dim")
    assert resolve_key("batch_size", MODEL_FIELDS) == ("train", "batch_size")
    assert resolve_key("guardrails.train_loss.danger", MODEL_FIELDS) == ("guardrails", "train_loss", "danger")
    with pytest.raises(UsageError, match="unknown setting 'dimm'"):
        resolve_key("dimm", MODEL_FIELDS)
    with pytest.raises(UsageError, match="unknown setting"):
        resolve_key("model.nope", MODEL_FIELDS)
    config = {"model": {"dim": 64}, "train": {"batch_size": 4}}
    out = apply_sets(config, [("dim", 128), ("train.batch_size", 8)], MODEL_FIELDS)
    assert out["model"]["dim"] == 128 and out["train"]["batch_size"] == 8 and config["model"]["dim"] == 64
    with pytest.raises(UsageError, match="model.dim: must be <= 8192"):
        apply_sets(config, [("dim", 10**9)], MODEL_FIELDS)
    with pytest.raises(UsageError, match="expected int"):
        apply_sets(config, [("dim", "$(rm -rf x)")], MODEL_FIELDS)
    with pytest.raises(UsageError, match="batch_size"):
        apply_sets(config, [("batch_size", 0)], MODEL_FIELDS)
    assert diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == [("a.c", 2, 3)]


def test_derive_state_rules():
    running = {"state": "running", "pid": 123}
    assert derive_state(RunState.from_dict({"state": "drafted"}), None, False) == "drafted"
    assert derive_state(RunState.from_dict(running), None, True) == "running"
    assert derive_state(RunState.from_dict(running), None, False) == "lost"
    assert derive_state(RunState.from_dict(running), 0, False) == "finished"
    assert derive_state(RunState.from_dict(running), 1, False) == "failed"
    assert derive_state(RunState.from_dict({"state": "stopped", "pid": 1}), 10, False) == "stopped"
    assert derive_state(RunState.from_dict({"state": "guardrail_stopped", "pid": 1}), 0, False) == "guardrail_stopped"
    assert derive_state(RunState.from_dict({"state": "guardrail_stopped", "pid": 1}), None, True) == "guardrail_stopped"


def test_pid_reuse_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(proc.pid)
        assert start is not None and is_alive(proc.pid, start)
        # Same pid, different recorded start time: a reused pid, not our run.
        assert not is_alive(proc.pid, start - 1)
        assert not is_alive(proc.pid, None)
    finally:
        proc.kill()
        proc.wait()
    assert not is_alive(proc.pid, start)


def test_update_state_is_atomic_and_merges(tmp_path):
    update_state(tmp_path, step=1, state="running")
    update_state(tmp_path, step=2)
    state = read_state(tmp_path)
    assert (state.step, state.state) == (2, "running")
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_update_state_refuses_unknown_fields(tmp_path):
    with pytest.raises(TypeError, match="no field stpe"):
        update_state(tmp_path, stpe=3)
    assert not (tmp_path / "state.json").exists()


def test_state_from_another_version_keeps_its_unknown_keys(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"state": "finished", "step": 7, "from_the_future": [1, 2]}))
    update_state(tmp_path, reviewed=True)
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["from_the_future"] == [1, 2] and data["reviewed"] is True and data["step"] == 7


def test_atomic_write_keeps_previous_on_crash(tmp_path):
    from minimind.atomic import atomic_open, write_text

    target = tmp_path / "state.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half-")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_help_is_fast_and_light():
    code = "import sys, cli; cli.main(['--help'], standalone_mode=False); print(sorted(m for m in ('torch','anthropic','swanlab','git','jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_atomic_files_get_the_usual_mode(tmp_path):
    from minimind.atomic import write_text

    write_text(tmp_path / "record.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "record.md").stat().st_mode & 0o777 == 0o666 & ~mask
