"""Replicates end to end at tiny size (issue 22): `new --seeds 3` trains three runs one after
another on one device, status shows the experiment's state and each replicate's, and the
experiment is analysed once and committed once.

- 0.1.0 base, 3 seeds; 0.1.1 the same config, 3 other seeds: inconclusive on every metric,
  every interval includes zero (Must show 1);
- 0.1.2 a tenfold lower learning rate, 3 seeds: decided by an interval that excludes zero
  (Must show 2);
- the lab's measured floor then decides a single-run experiment (its reason quotes it).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from lab_helpers import invoke, make_lab, wait_state

HYP = "A dense model lowers inference loss"


def _status(lab, version: str) -> dict:
    result = invoke(lab, "status", version, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _wait_experiment(lab, version: str, timeout: float = 240.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _status(lab, version)
        if info["state"] in ("finished", "failed", "lost", "stopped") and info["analysed"]:
            return info
        if info["state"] in ("failed", "lost"):
            return info
        time.sleep(0.5)
    raise AssertionError(f"{version}: {_status(lab, version)}\n" + (lab.run_dir(version) / "train.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundled):
    lab = make_lab(tmp_path_factory.mktemp("replicates") / "lab", bundled, steps=12)
    settings = lab.settings_path.read_text()
    lab.settings_path.write_text(settings.replace("num_samples: 3", "num_samples: 8"))
    result = invoke(lab, "new", "0.1.0", "--goal", "Baseline", "--hypothesis", HYP, "--seeds", "3")
    assert result.exit_code == 0, result.output
    assert "Replicates: 3 (seeds 42, 43, 44)" in result.output and "0.1.0@43" in result.output
    seen = set()
    deadline = time.time() + 240
    while time.time() < deadline:  # what status says while the replicates take turns
        info = _status(lab, "0.1.0")
        seen.add((info["state"], info["state_words"], tuple(r["state"] for r in info["replicates"])))
        if info["state"] == "finished" and info["analysed"]:
            break
        time.sleep(0.3)
    first = invoke(lab, "new", "0.1.1", "--base", "0.1.0", "--goal", "Same config, other seeds", "--hypothesis", HYP,
                   "--set", "train.seed=100", "--seeds", "3")
    assert first.exit_code == 0, first.output
    second = invoke(lab, "new", "0.1.2", "--base", "0.1.0", "--goal", "Tenfold lower learning rate",
                    "--hypothesis", "A tenfold lower learning rate leaves the loss higher after 12 steps",
                    "--expect", "inference_loss > base", "--set", "learning_rate=0.0003", "--set", "train.seed=200",
                    "--seeds", "3")
    assert second.exit_code == 0, second.output
    _wait_experiment(lab, "0.1.1")
    _wait_experiment(lab, "0.1.2")
    return lab, seen


def _analysis(lab, version: str) -> dict:
    return json.loads((lab.run_dir(version) / "analysis.json").read_text())


def test_status_shows_the_experiment_and_each_replicate(trained):
    lab, seen = trained
    states = {s for s, _, _ in seen}
    assert "running" in states and "finished" in states
    words = {w for _, w, _ in seen if w}
    assert any(w.endswith("of 3 done") for w in words), words
    assert any("queued" in reps for _, _, reps in seen)  # one device: the others wait their turn
    assert not any(reps.count("running") > 1 for _, _, reps in seen)  # one after another
    info = _status(lab, "0.1.0")
    assert [r["label"] for r in info["replicates"]] == ["0.1.0", "0.1.0@43", "0.1.0@44"]
    assert all(r["state"] == "finished" and r["evaluated"] for r in info["replicates"])
    table = invoke(lab, "status", env={"COLUMNS": "200"}).output
    assert "finished (3 replicates)" in table
    detail = invoke(lab, "status", "0.1.0").output
    assert "0.1.0@44 (seed 44): finished" in detail


def test_seed_only_is_inconclusive_on_every_metric(trained):
    """Must show 1."""
    lab, _ = trained
    analysis = _analysis(lab, "0.1.1")
    assert analysis["verdict_info"]["verdict"] == "inconclusive"
    reason = analysis["verdict_info"]["reason"]
    assert "3 vs 3 seeds" in reason and "seed-to-seed spread of the replicates" in reason
    with_ci = [r for r in analysis["comparison"] if r["ci"]]
    assert len(with_ci) >= 3
    proposal = json.loads((lab.run_dir("0.1.1") / "next.json").read_text())
    assert proposal["seeds"] == 3 and "3 replicates a side" in proposal["why"]
    for row in with_ci:
        assert row["ci"]["rule"] == "replicates", row
        assert row["ci"]["low"] <= 0 <= row["ci"]["high"], row
        assert row["mark"] != "✅" and row["mark"] != "❌"


def test_a_real_change_is_decided_by_an_interval_that_excludes_zero(trained):
    """Must show 2."""
    lab, _ = trained
    analysis = _analysis(lab, "0.1.2")
    assert analysis["verdict_info"]["verdict"] == "supported", analysis["verdict_info"]["reason"]
    row = {r["metric"]: r for r in analysis["comparison"]}["inference_loss"]
    assert row["ci"]["rule"] == "replicates" and row["ci"]["low"] > 0
    seeds = json.loads((lab.run_dir("0.1.2") / "seeds.json").read_text())
    assert seeds["seeds"] == [200, 201, 202] and seeds["spread"]["inference_loss"]["n"] == 3


def test_replicates_share_the_evaluation_items_and_differ_in_seed_alone(trained):
    lab, _ = trained
    from minimind.config import load_config

    main = load_config(lab.run_dir("0.1.0") / "config.yaml").to_dict()
    rep = load_config(lab.run_dir("0.1.0") / "seeds" / "43" / "config.yaml").to_dict()
    assert rep["train"].pop("seed") == 43 and main["train"].pop("seed") == 42
    assert rep["eval"].pop("draw_seed") == 42 and main["eval"].pop("draw_seed") is None
    assert rep == main
    evs = [json.loads((d / "eval.json").read_text()) for d in
           (lab.run_dir("0.1.0"), lab.run_dir("0.1.0") / "seeds" / "43")]
    assert evs[0]["per_item"]["inference"]["keys"] == evs[1]["per_item"]["inference"]["keys"]
    assert evs[0]["inference_loss"] != evs[1]["inference_loss"]


def test_one_analysis_one_record_one_commit(trained):
    lab, _ = trained
    logs = [(d / "train.log").read_text() for d in (lab.run_dir("0.1.0"), *sorted((lab.run_dir("0.1.0") / "seeds").glob("4*")))]
    assert len(logs) == 3 and sum(log.count("analysed the experiment: record") for log in logs) == 1
    assert sum("waiting for the other replicates before the analysis" in log for log in logs) == 2
    record = lab.record_path("0.1.0").read_text()
    assert record.count("## ") > 3
    assert invoke(lab, "review", "0.1.0", "--approve").exit_code == 0
    result = invoke(lab, "commit", "0.1.0")
    assert result.exit_code == 0, result.output
    files = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=lab.root, capture_output=True,
                           text=True).stdout.split()
    assert "runs/0.1.0/seeds/43/eval.json" in files and "runs/0.1.0/seeds/44/config.yaml" in files
    assert "runs/0.1.0/seeds.json" in files and "runs/0.1.0/seeds/44/state.committed.json" in files
    assert not any("checkpoints" in f or f.endswith("train.log") for f in files)
    count = subprocess.run(["git", "log", "--format=%s", "--", "runs/0.1.0"], cwd=lab.root, capture_output=True,
                           text=True).stdout.splitlines()
    assert len(count) == 1
    untracked = subprocess.run(["git", "status", "--porcelain", "--", "runs/0.1.0"], cwd=lab.root, capture_output=True,
                               text=True).stdout
    assert "checkpoints" not in untracked and ".queue" not in untracked


def test_log_and_eval_name_one_replicate(trained):
    lab, _ = trained
    one = invoke(lab, "log", "0.1.1@101", "-n", "3")
    assert one.exit_code == 0 and "==" not in one.output
    every = invoke(lab, "log", "0.1.1", "-n", "1").output
    assert "== 0.1.1 ==" in every and "== 0.1.1@102 ==" in every
    bad = invoke(lab, "log", "0.1.1@7")
    assert bad.exit_code != 0 and "no replicate with seed 7" in bad.output
    before = (lab.run_dir("0.1.1") / "seeds" / "101" / "eval.json").stat().st_mtime_ns
    again = invoke(lab, "eval", "0.1.1@101")
    assert again.exit_code == 0, again.output
    assert "Evaluated 0.1.1@101 and analysed 0.1.1" in again.output
    assert (lab.run_dir("0.1.1") / "seeds" / "101" / "eval.json").stat().st_mtime_ns > before
    assert json.loads((lab.run_dir("0.1.1") / "analysis.json").read_text())["verdict_info"]["verdict"] == "inconclusive"


def test_the_measured_floor_decides_a_single_run_experiment(trained):
    lab, _ = trained
    result = invoke(lab, "new", "0.1.3", "--base", "0.1.0", "--goal", "One run, another seed", "--hypothesis", HYP,
                    "--set", "train.seed=300")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.3") == "finished"
    _wait_experiment(lab, "0.1.3")
    analysis = _analysis(lab, "0.1.3")
    reason = analysis["verdict_info"]["reason"]
    assert analysis["verdict_info"]["verdict"] == "inconclusive", reason
    assert "lab's measured seed-to-seed spread" in reason and "inference_loss sd" in reason
    assert set(analysis["noise"]["floors"]["inference_loss"]["experiments"]) == {"0.1.0", "0.1.1", "0.1.2"}
    # the plan's "detectable change" sentence used the floor
    plan = json.loads((lab.run_dir("0.1.3") / "plan.json").read_text())
    assert "the lab's measured seed-to-seed spread of inference_loss is sd" in plan["expected"], plan["expected"]


def test_history_notebook_and_record_show_the_spread(trained):
    lab, _ = trained
    history = invoke(lab, "history", env={"COLUMNS": "200"}).output
    assert "run-to-run noise" in history and "inference_loss: seed-to-seed sd" in history
    assert "over 0.1.0, 0.1.1, 0.1.2" in history
    index = (lab.experiment_dir / "INDEX.md").read_text()
    assert "## Run-to-run noise" in index and "inference_loss: seed-to-seed sd" in index
    record = lab.record_path("0.1.2").read_text()
    assert "**Replicates** (3 runs differing only in their seed" in record
    assert "| 200 |" in record and "| 202 |" in record and "| seed-to-seed sd |" in record
    assert (lab.run_dir("0.1.2") / "plots" / "loss.png").stat().st_size > 1000


def test_replicate_adds_runs_to_a_finished_base_and_the_next_verdict_uses_them(trained):
    """Must show 6: `replicate` on a finished single-run experiment; its record is refreshed, and the
    next experiment compares with the mean of its replicates."""
    lab, _ = trained
    for verb in ("review", "commit"):  # approved and committed as one run first
        done = invoke(lab, verb, "0.1.3", *(["--approve"] if verb == "review" else []))
        assert done.exit_code == 0, done.output
    refused = invoke(lab, "replicate", "0.1.3", "--seeds", "1")
    assert refused.exit_code != 0 and "give --seeds above 1" in refused.output
    result = invoke(lab, "replicate", "0.1.3", "--seeds", "3")
    assert result.exit_code == 0, result.output
    assert "2 replicate(s) added (seeds 301, 302), 3 in all" in result.output
    info = _wait_experiment(lab, "0.1.3")
    assert info["state"] == "finished" and [r["seed"] for r in info["replicates"]] == [300, 301, 302]
    # the refreshed record is not the one the human approved and committed: status says so, and
    # commit asks for a review of it
    assert not info["reviewed"] and not info["committed"], info
    refused = invoke(lab, "commit", "0.1.3")
    assert refused.exit_code == 3 and "not reviewed" in refused.output, refused.output
    row = {r["metric"]: r for r in _analysis(lab, "0.1.3")["comparison"]}["inference_loss"]
    assert row["ci"]["rule"] == "replicates" and (row["ci"]["n_new"], row["ci"]["n_base"]) == (3, 3)
    assert "0.1.3" in _analysis(lab, "0.1.3")["noise"]["floors"]["inference_loss"]["experiments"]
    result = invoke(lab, "new", "0.1.4", "--base", "0.1.3", "--goal", "One run against the replicated base",
                    "--hypothesis", HYP, "--set", "train.seed=400")
    assert result.exit_code == 0, result.output
    _wait_experiment(lab, "0.1.4")
    row = {r["metric"]: r for r in _analysis(lab, "0.1.4")["comparison"]}["inference_loss"]
    assert row["ci"]["rule"] == "floor" and (row["ci"]["n_new"], row["ci"]["n_base"]) == (1, 3)
    base_mean = json.loads((lab.run_dir("0.1.3") / "seeds.json").read_text())["spread"]["inference_loss"]["mean"]
    assert row["base"] == pytest.approx(base_mean)
