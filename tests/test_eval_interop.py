"""`minimind eval` as the lab's guide types it, on other files, and the tokenizer check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import helpers_train as h
from lab_helpers import invoke
from minimind.lab import Lab
from models.registry import build_model, read_checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return h.shared_finished_run(tmp_path_factory)


def run_eval(*args: str):
    import subprocess

    return subprocess.run([h.PY, "-m", "training.evaluate", *args], cwd=h.REPO, env=h.env(), capture_output=True,
                          text=True, timeout=150)


def test_guide_spelling_on_a_raw_state_dict(finished, tmp_path, monkeypatch):
    """`minimind eval --model_path X.pth --model_type model_original --num_samples 5`, as typed in the guide:
    width, depth, vocabulary and key/value heads come from the weights; only the head count is a default."""
    lab = Lab(finished.parent.parent)
    torch.manual_seed(0)
    model = build_model(lab.models_dir, "model", {"preset": "original", "dim": 32, "n_layers": 2, "n_kv_heads": 4,
                                                   "vocab_size": 6400})
    raw = tmp_path / "pretrain_32.pth"
    torch.save(model.state_dict(), raw)
    monkeypatch.setenv("PYTHONPATH", str(h.REPO))
    result = invoke(lab, "eval", "--model_path", str(raw), "--model_type", "model_original", "--num_samples", "5",
                    "--n_layers", "2")
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "pretrain_32.eval.json").read_text())
    assert ev["num_samples"] == 5 and ev["model_config"]["n_kv_heads"] == 4 and ev["model_config"]["dim"] == 32
    assert ev["model_config"]["preset"] == "original" and isinstance(ev["val_loss"], float)


def test_moe_is_inferred_from_the_keys(finished, tmp_path):
    lab = finished.parent.parent
    torch.manual_seed(0)
    model = build_model(lab / "models", "model", {"preset": "original", "dim": 32, "n_layers": 1, "n_heads": 2,
                                                   "n_kv_heads": 1, "vocab_size": 6400, "use_moe": True,
                                                   "n_routed_experts": 3})
    raw = tmp_path / "moe.pth"
    torch.save(model.state_dict(), raw)
    done = run_eval("--model_path", str(raw), "--model_type", "model_original", "--lab", str(lab), "--n_heads", "2",
                    "--num_samples", "2", "--max-probes", "5")
    assert done.returncode == 0, done.stderr
    cfg = json.loads((tmp_path / "moe.eval.json").read_text())["model_config"]
    assert cfg["use_moe"] is True and cfg["n_routed_experts"] == 3 and cfg["n_kv_heads"] == 1


def test_checkpoints_record_their_tokenizer_and_a_mismatch_is_refused(finished, tmp_path_factory, tmp_path):
    best = finished / "checkpoints" / "pretrain_32.pth"
    recorded = read_checkpoint(best)["tokenizer"]
    trained_with = finished.parent.parent / "data" / "tokenizer.json"
    assert recorded["path"] == str(trained_with.resolve()) and len(recorded["sha256"]) == 64

    other_lab = h.make_lab(tmp_path_factory.mktemp("other_lab"), h.shared_data(tmp_path_factory))
    other = other_lab / "data" / "tokenizer.json"
    other.write_text(json.dumps(json.loads(other.read_text()), indent=1))  # same vocabulary, other bytes
    done = run_eval("--model-path", str(best), "--lab", str(other_lab), "--out", str(tmp_path / "e.json"),
                    "--num-samples", "2", "--max-probes", "5")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(trained_with.resolve()) in done.stderr and str(other) in done.stderr
    assert not (tmp_path / "e.json").exists()

    done = run_eval("--model-path", str(best), "--lab", str(other_lab), "--out", str(tmp_path / "e.json"),
                    "--tokenizer", str(other), "--num-samples", "2", "--max-probes", "5")
    assert done.returncode == 0, done.stderr
    assert "Warning: " in done.stderr and str(other) in done.stderr
    assert (tmp_path / "e.json").is_file()


def test_data_and_probes_options_point_eval_at_other_files(finished, tmp_path):
    """A lab whose minimind.yaml names no data can still be evaluated on files given here."""
    lab = finished.parent.parent
    best = finished / "checkpoints" / "pretrain_32.pth"
    probes = json.loads((lab / "data" / "probes.json").read_text())
    one_split = tmp_path / "probes.json"
    one_split.write_text(json.dumps({"splits": {"held_out": probes["splits"]["held_out"][:5]}}))
    lines = (lab / "data" / "pretrain.jsonl").read_text().splitlines()[:60]
    data = tmp_path / "other.jsonl"
    data.write_text("\n".join(lines) + "\n")
    done = run_eval("--model-path", str(best), "--lab", str(lab), "--out", str(tmp_path / "e.json"), "--data",
                    str(data), "--probes", str(one_split), "--num-samples", "2")
    assert done.returncode == 0, done.stderr
    ev = json.loads((tmp_path / "e.json").read_text())
    assert set(ev["recall"]) == {"held_out"} and ev["recall"]["held_out"]["n"] == 5
