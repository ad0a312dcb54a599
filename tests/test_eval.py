"""Evaluation: eval.json has every key of PRODUCT.md section 5 with finite values, both
entry styles work (--run-dir, and eval_model.py's --model-path/--model-type), and the
pure statistics behave."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

import helpers_train as h

REQUIRED = ("val_loss", "inference_loss", "train_loss", "train_inference_ratio", "repetition_rate", "distinct_2",
            "memory_entropy", "memory_coverage", "recall", "samples", "guardrails", "checkpoint", "module", "step",
            "num_samples", "time")
SPLITS = ("mem_only", "text_only", "both", "held_out")


def run_eval(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([h.PY, "-m", "training.evaluate", *args], cwd=h.REPO, env=h.env(), capture_output=True,
                          text=True, timeout=timeout)


def numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = h.shared_finished_run(tmp_path_factory)
    done = run_eval("--run-dir", str(run_dir), "--max-probes", "40")
    assert done.returncode == 0, done.stderr
    return run_dir, json.loads((run_dir / "eval.json").read_text())


def test_eval_json_has_every_product_key_with_finite_values(evaluated):
    run_dir, ev = evaluated
    for key in REQUIRED:
        assert key in ev, key
    for key in REQUIRED[:8]:
        assert isinstance(ev[key], float) and math.isfinite(ev[key]), key
    assert all(math.isfinite(x) for x in numbers(ev))
    assert ev["train_inference_ratio"] == pytest.approx(ev["inference_loss"] / ev["train_loss"])
    assert 0.0 <= ev["repetition_rate"] <= 1.0 and 0.0 < ev["distinct_2"] <= 1.0
    assert ev["module"] == "model_0_1_0" and ev["step"] == 30 and ev["num_samples"] == 3
    assert ev["checkpoint"].endswith("pretrain_32.pth")  # the best checkpoint by default


def test_eval_recall_per_split_with_intervals(evaluated):
    _, ev = evaluated
    assert set(ev["recall"]) == set(SPLITS)
    for split in SPLITS:
        r = ev["recall"][split]
        assert r["n"] == 40
        assert 0.0 <= r["p_at_1"] <= 1.0 and 0.1 <= r["mrr"] <= 1.0  # 10 candidates: MRR is at least 0.1
        low, high = r["p_at_1_ci"]
        assert low <= r["p_at_1"] <= high
        assert r["mrr_ci"][0] <= r["mrr"] <= r["mrr_ci"][1]


def test_eval_retrieval_diagnostics_per_bank_split_with_a_shuffled_control(evaluated):
    """A bank of 64 rows holds the first 64 knowledge sentences: the probes of those facts
    are asked, and each answer says whether the fact's own entry was read at the last token."""
    from corpus.knowledge import bank_rows, probe_key

    run_dir, ev = evaluated
    lab = run_dir.parent.parent
    ret = ev["retrieval"]
    assert ret["num_candidates"] == 4 and ret["memory_layers"] == 2 and ret["knowledge_num"] == 64
    rows = bank_rows(lab / "data" / "knowledge.json", 64)
    probes = json.loads((lab / "data" / "probes.json").read_text())["splits"]
    assert sum(len(r) for r in rows.values()) == 64
    for split in ("mem_only", "both"):
        r = ret[split]
        in_bank = [p for p in probes[split] if probe_key(p) in rows]
        assert r["in_bank"] == len(in_bank) > 0 and r["n"] == min(40, len(in_bank))
        assert 0.0 <= r["hit_at_1"] <= r["hit_at_c"] <= 1.0
        assert r["hit_at_c_ci"][0] <= r["hit_at_c"] <= r["hit_at_c_ci"][1]
        assert 0.0 <= r["control"]["hit_at_1"] <= r["control"]["hit_at_c"] <= 1.0
        items = ev["per_item"]["retrieval"][split]
        assert items["keys"] == [p["id"] for p in in_bank[:40]]
        assert sum(items["hit_at_c"]) / r["n"] == pytest.approx(r["hit_at_c"])
        assert all((rank == 0) == (hit == 0) for rank, hit in zip(items["rank"], items["hit_at_c"]))
        assert all(0 <= rank <= 4 for rank in items["rank"])
    assert set(ret) - {"num_candidates", "memory_layers", "knowledge_num"} == {"mem_only", "both"}


def test_bank_rows_follow_the_bank_fill_order(tmp_path):
    """Malformed elements are skipped, a full bank stops reading, a larger bank cycles."""
    from corpus.knowledge import bank_rows
    from training.measures import entry_rank

    def fact(s, o):
        return {"target": [{"sentence": f"{s} is {o}.", "subject": s, "predicate": "capital", "object": o}]}

    path = tmp_path / "knowledge.json"
    path.write_text(json.dumps([fact("A", "a"), {"target": []}, fact("B", "b"),
                                {"target": [{"sentence": "no triple"}]}, fact("C", "c")]))
    assert bank_rows(path, 2) == {("A", "capital", "a"): [0], ("B", "capital", "b"): [1]}
    assert bank_rows(path, 8) == {("A", "capital", "a"): [0, 4], ("B", "capital", "b"): [1, 5],
                                  ("C", "capital", "c"): [3, 7]}  # row 2 holds a sentence with no triple
    reads = [[(9, 0.5), (3, 0.3)], [(3, 0.6), (1, 0.2)]]  # two memory layers at one token
    assert entry_rank(reads, [3]) == 1 and entry_rank(reads, [1, 7]) == 2 and entry_rank(reads, [4]) is None


def test_eval_samples_guardrails_state_and_plot(evaluated):
    run_dir, ev = evaluated
    assert len(ev["samples"]) == 3
    for sample in ev["samples"]:
        assert set(sample) >= {"prompt", "reference", "generated", "sampled"}
        assert sample["prompt"] and sample["reference"]
    assert set(ev["guardrails"]) == {"train_loss", "train_inference_ratio", "repetition_rate", "memory_entropy"}
    assert all(g["level"] in ("safe", "watch", "danger") for g in ev["guardrails"].values())
    assert ev["guardrails"]["memory_entropy"]["value"] == pytest.approx(ev["memory_entropy"])
    assert h.state(run_dir)["evaluated"] is True
    assert (run_dir / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_is_reproducible(evaluated, tmp_path):
    run_dir, ev = evaluated
    out = tmp_path / "again.json"
    done = run_eval("--run-dir", str(run_dir), "--max-probes", "40", "--out", str(out))
    assert done.returncode == 0, done.stderr
    again = json.loads(out.read_text())
    for key in ("val_loss", "inference_loss", "repetition_rate", "distinct_2", "recall", "samples"):
        assert again[key] == ev[key], key


def test_model_path_with_a_raw_state_dict_and_no_memory(evaluated, tmp_path):
    """eval_model.py style: a bare MiniMind state dict, the type and sizes on the command line."""
    import torch

    from models.registry import build_model

    run_dir, _ = evaluated
    lab = run_dir.parent.parent
    torch.manual_seed(0)
    model = build_model(lab / "models", "model", {"preset": "original", "dim": 32, "n_layers": 2, "n_heads": 2,
                                                  "vocab_size": 6400})
    raw = tmp_path / "pretrain_32.pth"
    torch.save(model.state_dict(), raw)
    done = run_eval("--model-path", str(raw), "--model-type", "model_original", "--lab", str(lab),
                    "--dim", "32", "--n_layers", "2", "--n_heads", "2", "--num-samples", "2", "--max-probes", "10")
    assert done.returncode == 0, done.stderr
    ev = json.loads((tmp_path / "pretrain_32.eval.json").read_text())
    for key in REQUIRED:
        assert key in ev, key
    assert ev["memory_entropy"] is None and ev["memory_coverage"] is None  # no memory layer: null, not 0
    assert ev["retrieval"] is None and ev["per_item"]["retrieval"] == {}
    assert ev["guardrails"]["memory_entropy"] == {"value": None, "level": "n/a"}
    assert ev["train_loss_source"].startswith("measured")
    assert ev["model_config"]["preset"] == "original" and ev["model_config"]["vocab_size"] == 6400
    assert all(math.isfinite(x) for x in numbers(ev))


def test_a_preset_added_to_model_py_is_a_model_type(evaluated, tmp_path_factory, tmp_path):
    """--model-type takes its presets from the lab's models/model.py: one new entry there is enough."""
    import torch

    from models.registry import build_model

    lab = h.make_lab(tmp_path_factory.mktemp("preset_lab"), h.shared_data(tmp_path_factory))
    raw = tmp_path / "plain.pth"
    args = ("--model-path", str(raw), "--model-type", "plain", "--lab", str(lab), "--dim", "32", "--n_layers", "2",
            "--n_heads", "2", "--num-samples", "2", "--max-probes", "10")
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4)}, raw)
    refused = run_eval(*args)
    assert refused.returncode == 2 and refused.stderr.startswith("Error: --model-type 'plain'"), refused.stderr
    assert "original" in refused.stderr and "model_1_4_8" in refused.stderr

    source = (lab / "models" / "model.py").read_text()
    assert source.count("\nPRESETS = {\n") == 1
    (lab / "models" / "model.py").write_text(source.replace(
        "\nPRESETS = {\n", '\nPRESETS = {\n    "plain": BlockSpec(feed_forward=True, memory=False),\n'))
    torch.manual_seed(0)
    model = build_model(lab / "models", "model", {"preset": "plain", "dim": 32, "n_layers": 2, "n_heads": 2,
                                                  "vocab_size": 6400})
    torch.save(model.state_dict(), raw)
    done = run_eval(*args)
    assert done.returncode == 0, done.stderr
    ev = json.loads((tmp_path / "plain.eval.json").read_text())
    assert ev["module"] == "model" and ev["model_config"]["preset"] == "plain"
    assert ev["memory_entropy"] is None and isinstance(ev["val_loss"], float)


def test_a_snapshot_model_type_never_imports_the_living_model(tmp_path):
    """Evaluating model_1_4_8 must not depend on models/model.py, which may be mid-edit."""
    from minimind.lab import Lab
    from training.evaluate import module_and_preset

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.py").write_text("raise RuntimeError('half-edited model.py')\n")
    lab = Lab(tmp_path)
    assert module_and_preset(lab, "model_1_4_8") == ("model_1_4_8", None)
    with pytest.raises(RuntimeError, match="half-edited"):
        module_and_preset(lab, "original")  # presets are the living file's: it is read for them


def test_raw_state_dict_needs_a_model_type(evaluated, tmp_path):
    import torch

    run_dir, _ = evaluated
    raw = tmp_path / "raw.pth"
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4)}, raw)
    done = run_eval("--model-path", str(raw), "--lab", str(run_dir.parent.parent))
    assert done.returncode == 2 and done.stderr.startswith("Error: ") and "--model-type" in done.stderr


def test_truncated_checkpoint_in_eval_is_a_one_line_error(evaluated, tmp_path):
    run_dir, _ = evaluated
    bad = tmp_path / "bad.pth"
    blob = (run_dir / "checkpoints" / "last.pth").read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])
    done = run_eval("--run-dir", str(run_dir), "--checkpoint", str(bad), "--out", str(tmp_path / "x.json"))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "truncated or corrupt" in done.stderr
    assert not (tmp_path / "x.json").exists()


# --- pure pieces ----------------------------------------------------------------------

def test_text_statistics():
    from training.measures import bootstrap_ci, distinct_n, rank_of_answer, repetition_rate, seq_rep_n

    assert seq_rep_n([1, 2, 3, 4, 5, 6], 4) == 0.0
    assert seq_rep_n([7] * 8, 4) == pytest.approx(1 - 1 / 5)
    assert seq_rep_n([1, 2, 3], 4) is None
    assert repetition_rate([[7] * 8, [1, 2, 3, 4, 5], [1]], 4) == pytest.approx((0.8 + 0.0) / 2)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert rank_of_answer([-1.0, -2.0, -3.0]) == 1
    assert rank_of_answer([-2.0, -1.0, -3.0]) == 2
    assert rank_of_answer([-1.0, -1.0, -1.0]) == 3  # ties never favour the answer
    ci = bootstrap_ci([0, 1] * 50, seed=3)
    assert ci == bootstrap_ci([0, 1] * 50, seed=3) and ci[0] < 0.5 < ci[1]


def test_document_split_is_deterministic_and_disjoint():
    from training.data import Stream, split_documents

    train, val = split_documents(1000, 0.05, seed=7)
    again_train, again_val = split_documents(1000, 0.05, seed=7)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert 25 <= len(val) <= 80
    assert len(split_documents(3, 0.001, 0)[1]) == 1  # always at least one held-out document
    ranks = [Stream(train, 8, 7, r, 2) for r in range(2)]
    first = [set(s.batch(0)[1]) | set(s.batch(1)[1]) for s in ranks]
    assert not first[0] & first[1] and ranks[0].batches_per_epoch == ranks[1].batches_per_epoch


def test_schedule_warms_up_then_decays_to_the_floor():
    from training.schedule import lr_factor

    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_plot_loss_curves_writes_a_png(tmp_path):
    from training.plots import plot_loss_curves

    out = plot_loss_curves({"a": [(1, 3.0), (2, 2.0)], "b": [(1, 4.0), (2, 2.5)]}, tmp_path / "p.png", "two runs")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_evaluation_puts_the_model_on_the_trainers_device(evaluated, monkeypatch, tmp_path):
    """evaluate() resolves the device with training.runtime.run_device (the trainer's rule)
    and measures under the run's precision, instead of always staying on the CPU."""
    from minimind.config import load_config
    from minimind.lab import Lab
    from training import evaluate, runtime

    run_dir, _ = evaluated
    cfg = load_config(run_dir / "config.yaml")
    asked, seen = [], {}
    real = runtime.run_device
    monkeypatch.setattr(runtime, "run_device", lambda c, *a, **k: asked.append(c) or real(c, *a, **k))

    def measure(lab, cfg_, checkpoint, model, *rest):
        seen["device"] = next(model.parameters()).device
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return {}

    import torch
    monkeypatch.setattr(evaluate, "_measure", measure)
    cfg.launch.mixed_precision = "bf16"
    evaluate.evaluate(Lab(run_dir.parent.parent), cfg, run_dir / "checkpoints" / "last.pth", None, {},
                      tmp_path / "e.json", None)
    assert asked and seen["device"] == real(cfg) == torch.device("cpu")  # launch.cpu: the trainer's device too
    assert seen["autocast"] is True


def test_a_guardrail_without_an_eval_json_key_reads_unavailable(evaluated, monkeypatch, tmp_path):
    """A guardrail measured only from the trainer's log rows (here a new rule on grad_norm)
    has no eval.json key: the evaluation judges it n/a from the sources table instead of
    failing with a KeyError, and judges the other four as before."""
    from minimind import guardrails as rules
    from minimind.config import load_config
    from minimind.lab import Lab
    from minimind.settings import GuardrailRule
    from training import evaluate

    run_dir, ev = evaluated
    cfg = load_config(run_dir / "config.yaml")
    monkeypatch.setattr(rules, "NAMES", (*rules.NAMES, "grad_norm"))
    monkeypatch.setitem(rules.SOURCES, "grad_norm", ("train:grad_norm",))
    cfg.guardrails.grad_norm = GuardrailRule(safe=1.0, danger=10.0, action="flag")
    out = evaluate.evaluate(Lab(run_dir.parent.parent), cfg, run_dir / "checkpoints" / "pretrain_32.pth", None, {},
                            tmp_path / "e.json", None, max_probes=40)
    assert out["guardrails"]["grad_norm"] == {"value": None, "level": "n/a"}
    assert list(out["guardrails"]) == [*ev["guardrails"], "grad_norm"]
    for name in ("repetition_rate", "memory_entropy"):  # the train loss is measured again without a run
        assert out["guardrails"][name] == ev["guardrails"][name]
    assert out["guardrails"]["train_loss"]["value"] == out["train_loss"]
