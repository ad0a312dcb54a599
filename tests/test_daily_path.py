"""The README's "Daily use", walked as a researcher walks it, at a tiny size.

A dense base, then a memory experiment whose knowledge_num differs from the lab's (the case
whose analysis once failed on a non-square proposal and left review and commit at a dead
end), then SFT on the memory model: each trained, analysed, reviewed and committed with no
`--yes` and no `--force`; then the lab's notebook, a comparison, and a `git clone` of the lab
that remembers all three and builds the next experiment on the last finished one.
"""

from __future__ import annotations

import json
import subprocess

from lab_helpers import invoke, make_lab, wait_state

TINY_CHAT = ["--set", "eval.chat_probes=6", "--set", "eval.chat_max_new_tokens=10"]


def finish(lab, version: str) -> dict:
    """Wait for the run and its analysis; the analysis must not have failed."""
    assert wait_state(lab, version, until=("finished", "failed", "stopped", "guardrail_stopped", "lost")) == "finished"
    wait_state(lab, version, predicate=lambda d, s: s.analysed or s.analysis_failed)
    detail = json.loads(invoke(lab, "status", version, "--json").output)
    assert detail["analysed"] and not detail["analysis_failed"], detail.get("analysis_error")
    return detail


def approve_and_commit(lab, version: str) -> None:
    review = invoke(lab, "review", version, "--approve")
    assert review.exit_code == 0, review.output
    assert "Approved" in review.output
    done = invoke(lab, "commit", version)
    assert done.exit_code == 0, done.output
    assert "No drafted message" not in done.output


def test_daily_use_dense_memory_sft_review_commit_and_a_clone(tmp_path, bundled_data):
    lab = make_lab(tmp_path / "lab", bundled_data, steps=12, sft=True)

    # 1. the dense base
    new = invoke(lab, "new", "0.1.0", "--goal", "Dense SwiGLU baseline", "--hypothesis",
                 "The dense model learns the bundled facts below the uniform loss", "--set", "preset=original",
                 "--expect", "inference_loss < 8", *TINY_CHAT)
    assert new.exit_code == 0, new.output
    finish(lab, "0.1.0")
    approve_and_commit(lab, "0.1.0")

    # 2. the memory layer, with a bank of its own size (the lab's default is 256 entries here)
    new = invoke(lab, "new", "0.1.1", "--goal", "Replace the FFN by the memory bank", "--hypothesis",
                 "Reading real sentences lowers inference loss", "--set", "preset=memory",
                 "--set", "knowledge_num=4096", "--expect", "inference_loss < base", *TINY_CHAT)
    assert new.exit_code == 0, new.output
    assert "base 0.1.0" in new.output
    finish(lab, "0.1.1")
    analysis = json.loads((lab.run_dir("0.1.1") / "analysis.json").read_text())
    assert analysis["verdict_info"]["verdict"] in ("supported", "refuted", "inconclusive")
    proposal = lab.run_dir("0.1.1") / "next.json"
    if proposal.exists():  # a proposal that is kept is one `new` accepts: a square bank, say
        sets = dict(item.split("=", 1) for item in json.loads(proposal.read_text()).get("sets", []))
        for key, value in sets.items():
            if key.endswith("knowledge_num"):
                assert int(value) ** 0.5 == int(int(value) ** 0.5), value
    approve_and_commit(lab, "0.1.1")

    # 3. SFT of the memory model
    new = invoke(lab, "new", "0.1.2", "--stage", "sft", "--base", "0.1.1", "--goal", "Teach 0.1.1 to answer",
                 "--hypothesis", "SFT lowers the SFT loss on held-out conversations", "--set", "max_steps=8",
                 "--expect", "sft_loss < base", *TINY_CHAT)
    assert new.exit_code == 0, new.output
    finish(lab, "0.1.2")
    approve_and_commit(lab, "0.1.2")

    # 4. the notebook and a comparison
    history = json.loads(invoke(lab, "history", "--json").output)
    assert [r["version"] for r in history] == ["0.1.0", "0.1.1", "0.1.2"]
    assert all(r["verdict"] for r in history)
    compare = invoke(lab, "compare", "0.1.0", "0.1.1", "0.1.2")
    assert compare.exit_code == 0, compare.output
    log = subprocess.run(["git", "log", "--format=%s"], cwd=lab.root, capture_output=True, text=True, check=True)
    assert log.stdout.count("0.1.") >= 3

    # 5. a clone remembers every committed experiment and builds on the last finished one
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(lab.root), str(clone)], check=True)
    from minimind.lab import Lab

    cloned = Lab(clone)
    status = json.loads(invoke(cloned, "status", "--json").output)
    rows = status if isinstance(status, list) else status.get("experiments", status)
    versions = {r["version"]: r for r in rows}
    assert set(versions) == {"0.1.0", "0.1.1", "0.1.2"}
    assert all(r["state"] in ("finished", "committed") for r in versions.values()), versions
    history = json.loads(invoke(cloned, "history", "--json").output)
    assert [r["verdict"] for r in history] == [r["verdict"] for r in
                                               json.loads(invoke(lab, "history", "--json").output)]
    assert invoke(cloned, "compare", "0.1.0", "0.1.1").exit_code == 0
    new = invoke(cloned, "new", "0.1.3", "--goal", "Next", "--hypothesis", "It builds on the committed work",
                 "--no-launch")
    assert new.exit_code == 0, new.output
    assert "base 0.1.1" in new.output  # the committed pretraining run (0.1.2 is its SFT, another stage)
