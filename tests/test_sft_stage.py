"""SFT as an experiment stage: new --stage sft --base V starts from V's best checkpoint, trains on
the bundled conversations (assistant tokens only), and is evaluated, reviewed and committed as
pretraining is; eval.json gains sft_loss, chat_qa and chat; the verdict reads them."""

from __future__ import annotations

import json
import subprocess

import pytest

from lab_helpers import invoke, make_lab, tree, wait_state

GOAL = "Teach the pretrained model to answer questions"
HYP = "SFT on the bundled conversations raises chat QA accuracy on the taught facts"
TINY_CHAT = ["--set", "eval.chat_probes=6", "--set", "eval.chat_max_new_tokens=10"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, bundled_data):
    """A lab with a finished memory-model pretrain experiment 0.1.0 (its EMA moves the bank)."""
    lab = make_lab(tmp_path_factory.mktemp("sft") / "lab", bundled_data, steps=10, sft=True)
    result = invoke(lab, "new", "0.1.0", "--goal", "pretrain", "--hypothesis", "inference loss below uniform",
                    "--set", "preset=memory", "--set", "ema_update_freq=1", *TINY_CHAT)
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.0", until=("finished", "failed")) == "finished"
    wait_state(lab, "0.1.0", predicate=lambda d, s: s.analysed)
    return lab


def _one_line_refusal(lab, args, code, message):
    before = tree(lab.root)
    result = invoke(lab, *args)
    lines = [l for l in result.output.strip().splitlines() if l]
    assert result.exit_code == code and len(lines) == 1 and message in lines[0], result.output
    assert tree(lab.root) == before


def test_sft_refuses_a_missing_unfinished_or_unfit_base(lab):
    new = ["new", "0.2.0", "--stage", "sft", "--goal", GOAL, "--hypothesis", HYP]
    _one_line_refusal(lab, new, 2, "--stage sft needs --base")
    _one_line_refusal(lab, new + ["--base", "0.0.9"], 2, "base experiment 0.0.9 does not exist")
    _one_line_refusal(lab, new + ["--base", "0.1.0", "--set", "dim=64"], 1, "does not fit")
    assert invoke(lab, "new", "0.1.5", "--goal", "draft", "--hypothesis", "draft", "--no-launch").exit_code == 0
    _one_line_refusal(lab, ["new", "0.2.0", "--stage", "sft", "--goal", GOAL, "--hypothesis", HYP, "--base", "0.1.5"],
                      1, "base experiment 0.1.5 is drafted, not finished")
    best = lab.run_dir("0.1.0") / "checkpoints" / "pretrain_32.pth"
    best.rename(best.with_suffix(".away"))
    try:
        _one_line_refusal(lab, new + ["--base", "0.1.0"], 1, "has no best checkpoint")
    finally:
        best.with_suffix(".away").rename(best)


def test_sft_experiment_new_status_eval_review_commit(lab):
    import torch

    result = invoke(lab, "new", "0.2.0", "--stage", "sft", "--base", "0.1.0", "--goal", GOAL, "--hypothesis", HYP,
                    "--expect", "chat_qa.taught.accuracy >= base and sft_loss < base", "--set", "ema_decay=1.0",
                    "--set", "max_steps=8", *TINY_CHAT)
    assert result.exit_code == 0, result.output
    assert "stage:    sft, from experiment 0.1.0's runs/0.1.0/checkpoints/pretrain_32.pth" in result.output
    assert wait_state(lab, "0.2.0", until=("finished", "failed")) == "finished"
    wait_state(lab, "0.2.0", predicate=lambda d, s: s.analysed)
    run = lab.run_dir("0.2.0")
    cfg = (run / "config.yaml").read_text()
    assert "stage: sft" in cfg and "checkpoint: runs/0.1.0/checkpoints/pretrain_32.pth" in cfg
    assert (lab.models_dir / "model_0_2_0.py").read_bytes() == (lab.models_dir / "model.py").read_bytes()
    log = (run / "train.log").read_text()
    assert "SFT from experiment 0.1.0: runs/0.1.0/checkpoints/pretrain_32.pth" in log

    # The bank and the freeze mask came from the base: with EMA off (ema_decay=1) they are the base's exactly.
    base = torch.load(lab.run_dir("0.1.0") / "checkpoints" / "pretrain_32.pth", weights_only=True)["model"]
    sft = torch.load(run / "checkpoints" / "full_sft_32.pth", weights_only=True)["model"]
    assert torch.equal(base["memory_bank"], sft["memory_bank"]) and torch.equal(base["memory_frozen"], sft["memory_frozen"])
    assert not torch.equal(sft["tok_embeddings.weight"], base["tok_embeddings.weight"])  # and SFT trained

    ev = json.loads((run / "eval.json").read_text())
    base_ev = json.loads((lab.run_dir("0.1.0") / "eval.json").read_text())
    assert ev["stage"] == "sft" and ev["init"]["version"] == "0.1.0"
    for e in (ev, base_ev):
        assert isinstance(e["sft_loss"], float) and e["sft_eval_conversations"] > 0
        assert set(e["chat_qa"]) >= {"mem_only", "text_only", "both", "held_out", "taught"}
        assert e["chat_qa"]["both"]["n"] == 6 and len(e["chat_qa"]["both"]["accuracy_ci"]) == 2
        assert 0.0 <= e["chat"]["stop_rate"] <= 1.0 and e["chat"]["n"] >= 24
    assert ev["sft_loss"] < base_ev["sft_loss"]  # the replies were learned
    assert isinstance(ev["sft_inference_loss"], float)
    assert ev["train_inference_ratio"] == pytest.approx(ev["sft_inference_loss"] / ev["train_loss"])
    analysis = json.loads((run / "analysis.json").read_text())
    assert "chat_qa.taught.accuracy" in analysis["verdict_info"]["reason"]
    assert "sft_loss" in analysis["verdict_info"]["reason"]

    status = invoke(lab, "status")
    assert status.exit_code == 0 and "sft" in status.output
    detail = invoke(lab, "status", "0.2.0", "--json")
    assert json.loads(detail.output)["stage"] == "sft"
    record = lab.record_path("0.2.0").read_text()
    assert "runs/0.1.0/checkpoints/pretrain_32.pth" in record and ev["init"]["sha256"] in record
    compare = invoke(lab, "compare", "0.1.0", "0.2.0")
    assert compare.exit_code == 0 and "pretrain base" in compare.output and "chat_qa.taught.accuracy" in compare.output

    assert invoke(lab, "review", "0.2.0", "--approve").exit_code == 0
    done = invoke(lab, "commit", "0.2.0")
    assert done.exit_code == 0, done.output
    shown = subprocess.run(["git", "show", "--stat", "--format=%s", "HEAD"], cwd=lab.root, capture_output=True,
                           text=True).stdout
    assert shown.startswith("Experiment 0.2.0") and "models/model_0_2_0.py" in shown


def test_a_changed_base_checkpoint_is_refused_at_training(lab, bundled_data):
    from minimind.config import load_config

    cfg = load_config(lab.run_dir("0.2.0") / "config.yaml") if (lab.run_dir("0.2.0") / "config.yaml").exists() else None
    if cfg is None:
        pytest.skip("needs the SFT experiment of the previous test")
    from minimind.errors import MinimindError
    from training.sft import _read_init

    path = lab.resolve(cfg.init.checkpoint)
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"x")
        with pytest.raises(MinimindError, match="changed since this experiment was created"):
            _read_init(lab, cfg)
    finally:
        path.write_bytes(original)
