"""Run-to-run noise as a pure rule (minimind/noise.py) and in the verdict (minimind/verdict.py):
replicate intervals, the lab's measured floor, and the unmeasured case that keeps the 1% floor."""

from __future__ import annotations

import math

import pytest

from minimind import noise
from minimind.verdict import compare_rows, decide
from verdict_data import NOISY, measured


def _ev(shift: float) -> dict:
    """One run: every document's loss moved by `shift` (a seed moves all documents alike)."""
    return measured([v + shift for v in NOISY])


def test_t_quantiles_match_the_tables():
    assert noise.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert noise.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert noise.t_quantile(0.975, 1e6) == pytest.approx(1.960, abs=1e-3)
    assert noise.t_quantile(0.025, 10) == pytest.approx(-2.228, abs=1e-3)


def test_pooled_floor_pools_within_experiment_variance_only():
    # two experiments far apart in level: only the spread within each counts
    floor = noise.pooled_floor("inference_loss", {"0.1.0": [4.0, 4.2], "0.2.0": [3.0, 3.1, 3.2], "0.3.0": [9.9]})
    assert floor.experiments == ("0.1.0", "0.2.0") and floor.df == 3
    assert floor.sd == pytest.approx(math.sqrt((0.02 + 0.02) / 3))
    assert noise.pooled_floor("x", {"0.1.0": [1.0]}) is None


def test_seeds_needed_grows_as_the_effect_shrinks():
    assert noise.seeds_needed(0.05, 0.22) == 2  # t(0.975, 2 df) · 0.05 · √(2/2) = 0.215
    assert noise.seeds_needed(0.05, 0.2) == 3
    few, many = noise.seeds_needed(0.05, 0.1), noise.seeds_needed(0.05, 0.04)
    assert few < many
    assert noise.seeds_needed(0.05, 0.0001) is None


def test_both_sides_replicated_decide_by_the_interval_of_the_means():
    base = [_ev(s) for s in (0.00, 0.05, -0.04)]
    same = [_ev(s) for s in (0.03, -0.02, 0.01)]
    verdict, reason = decide("lower inference loss", None, same, base, base_version="0.1.0")
    assert verdict == "inconclusive"
    assert "3 vs 3 seeds" in reason and "seed-to-seed spread of the replicates" in reason
    row = {r["metric"]: r for r in compare_rows(same, base)}["inference_loss"]
    assert row["ci"]["rule"] == "replicates" and row["ci"]["low"] < 0 < row["ci"]["high"]
    better = [_ev(s) for s in (-0.50, -0.46, -0.53)]
    verdict, reason = decide("lower inference loss", None, better, base, base_version="0.1.0")
    assert verdict == "supported" and "3 vs 3 seeds" in reason
    row = {r["metric"]: r for r in compare_rows(better, base)}["inference_loss"]
    assert row["ci"]["high"] < 0 and row["mark"] == "✅"


def test_replicates_see_a_seed_shift_the_paired_interval_alone_would_call_a_change():
    # each side's runs differ by a whole-document shift: per run, the paired interval excludes zero
    base = [_ev(s) for s in (0.0, 0.2)]
    new = [_ev(s) for s in (-0.15, 0.1)]
    single = {r["metric"]: r for r in compare_rows(new[0], base[0])}["inference_loss"]
    assert single["ci"]["high"] < 0  # one run against one: "a change"
    verdict, _ = decide("lower inference loss", None, new, base)
    assert verdict == "inconclusive"


def test_noise_floor_applied_to_a_single_run_change():
    """Must show 3: a change the 1% rule calls supported is inconclusive within the measured spread."""
    new, base = _ev(-0.06), _ev(0.0)  # 1.4% lower on every document
    verdict, reason = decide("lower inference loss", None, new, base, base_version="0.1.0")
    assert verdict == "supported"  # today's rule: beyond 1%, interval excludes zero
    assert "run-to-run noise is unmeasured" in reason and "minimind replicate 0.1.0 --seeds 3" in reason
    floors = noise.lab_floor({"0.1.0": {"inference_loss": [4.15, 4.22, 4.09]}})  # sd 0.065
    verdict, reason = decide("lower inference loss", None, new, base, floors=floors, base_version="0.1.0")
    assert verdict == "inconclusive"
    assert "seed sd 0.065" in reason and "measured seed-to-seed spread" in reason and "0.1.0" in reason
    row = {r["metric"]: r for r in compare_rows(new, base, floors=floors)}["inference_loss"]
    assert row["ci"]["rule"] == "floor" and row["mark"] == "≈" and "lab seed spread" in row["delta_text"]
    # a change well beyond the floor is still decided, with the floor named
    verdict, reason = decide("lower inference loss", None, _ev(-0.6), base, floors=floors)
    assert verdict == "supported" and "seed sd 0.065" in reason


def test_floor_between_a_replicated_side_and_a_single_run():
    # a replicated experiment against a single-run base of an older lab, and the other way round
    floors = noise.lab_floor({"0.2.0": {"inference_loss": [4.0, 4.02, 3.98]}})
    reps = [_ev(s) for s in (-0.30, -0.32, -0.28)]
    for new, base in ((reps, _ev(0.0)), (_ev(0.0), reps)):
        row = {r["metric"]: r for r in compare_rows(new, base, floors=floors)}["inference_loss"]
        assert row["ci"]["rule"] == "floor" and (row["ci"]["n_new"], row["ci"]["n_base"]) in ((3, 1), (1, 3))
        assert row["ci"]["low"] > 0 or row["ci"]["high"] < 0
    # without a floor: the sample interval and the fixed floor, said as such
    verdict, reason = decide("lower inference loss", None, reps, _ev(0.0))
    assert verdict == "supported" and "run-to-run noise is unmeasured" in reason


def test_unmeasured_keeps_the_fixed_floor_and_says_how_to_measure():
    new = measured([v * 0.996 for v in NOISY])
    verdict, reason = decide("lower inference loss", None, new, _ev(0.0), base_version="0.3.1")
    assert verdict == "inconclusive" and "run-to-run floor of 1%" in reason
    assert "noise: the evaluation sample only" in reason and "minimind replicate 0.3.1 --seeds 3" in reason


def test_a_fixed_target_with_replicates_uses_their_spread():
    reps = [measured(NOISY, recall={"mem_only": [1.0] * k + [0.0] * (40 - k)}) for k in (16, 17, 18)]
    verdict, reason = decide("h", "recall.mem_only.p_at_1 > 0.2", reps, None)
    assert verdict == "supported" and "over 3 seeds" in reason
    verdict, _ = decide("h", "recall.mem_only.p_at_1 > 0.4", reps, None)
    assert verdict == "inconclusive"
    floors = noise.lab_floor({"0.1.0": {"recall.mem_only.p_at_1": [0.40, 0.45, 0.42]}})
    verdict, reason = decide("h", "recall.mem_only.p_at_1 > 0.2", reps[0], None, floors=floors)
    assert verdict == "supported" and "with the lab's seed sd 0.0252, 1 run(s)" in reason


def test_a_proposal_keeps_the_replicates_its_verdict_rests_on():
    from lifecycle.knowledge.proposal import proposed_seeds

    assert proposed_seeds(3, "supported", True) == 3 and proposed_seeds(2, "refuted", False) == 2
    assert proposed_seeds(1, "inconclusive", True) == 3  # one run could not tell it from the measured spread
    assert proposed_seeds(1, "inconclusive", False) == 1 and proposed_seeds(1, "supported", True) == 1


# --- the replicates' pure rules (lifecycle/knowledge/replicates.py, minimind/rundir.py, lifecycle/knowledge/estimate.py) ---

def test_replicate_names_seeds_and_the_experiment_state():
    from lifecycle.knowledge.replicates import aggregate, next_seeds
    from minimind.errors import UsageError
    from minimind.rundir import split_label

    assert split_label("1.2.0@43") == ("1.2.0", 43) and split_label("1.2.0") == ("1.2.0", None)
    with pytest.raises(UsageError):
        split_label("1.2.0@x")
    assert next_seeds(42, [42], 3) == [43, 44] and next_seeds(42, [42, 44], 4) == [43, 45]
    with pytest.raises(UsageError):
        next_seeds(42, [42], 0)
    assert aggregate(["finished"], [True]) == ("finished", None)
    assert aggregate(["finished", "running", "queued"], [True, False, False]) == ("running", "1 of 3 done")
    assert aggregate(["queued", "queued"], [False, False]) == ("queued", "0 of 2 done")
    assert aggregate(["finished", "lost", "running"], [True, False, False]) == ("running", "1 of 3 done")
    assert aggregate(["finished", "lost", "finished"], [True, False, True]) == ("lost", "1 replicate(s) lost; 2 of 3 done")
    assert aggregate(["finished", "finished"], [True, False]) == ("running", "2 of 2 done; evaluating")
    assert aggregate(["finished"] * 3, [True] * 3) == ("finished", "3 replicates")


def test_the_compute_estimate_and_its_gate_count_every_replicate():
    from lifecycle.knowledge.estimate import for_replicates, replicate_gate
    from minimind.errors import GateRefused

    est = {"train_flops": 1e12, "wall_s": 60.0}
    three = for_replicates(est, 3)
    assert (three["train_flops"], three["wall_s"], three["run_train_flops"]) == (3e12, 180.0, 1e12)
    assert for_replicates(est, 1) is est
    assert replicate_gate(est, 2, 4.0, False) is None
    with pytest.raises(GateRefused, match="5 more replicates"):
        replicate_gate(est, 5, 4.0, False)
    assert "accepted with --yes" in replicate_gate(est, 5, 4.0, True)


def test_the_noise_bench_reads_spread_single_run_intervals_and_seeds_needed():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "noise_floor.py"
    spec = importlib.util.spec_from_file_location("noise_floor_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    evs = [_ev(s) for s in (0.0, 0.1, -0.05, 0.04)]
    out = bench.preset_numbers(evs)["inference_loss"]
    assert out["seed_sd"] == pytest.approx(noise.sample_sd([e["inference_loss"] for e in evs]))
    # every seed shifts every document alike: the single-run paired interval is narrow and calls it a change
    assert out["single_run_paired_half_width"] < out["seed_sd"]
    assert out["seed_only_pairs_called_a_change"] == "3 of 3"
    assert out["seeds_needed"]["1%"] is None or out["seeds_needed"]["1%"] > out["seeds_needed"]["10%"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_record_shows_each_replicate_and_their_spread(lang, tmp_path):
    from lifecycle.document.record import replicates_view
    from lifecycle.document.render import render
    from minimind.atomic import write_json
    from verdict_data import record_context

    assert replicates_view(tmp_path) is None  # a single run: no table
    write_json(tmp_path / "seeds.json", {
        "seeds": [42, 43], "replicates": [{"seed": 42, "metrics": {"inference_loss": 4.1, "val_loss": 4.3}},
                                          {"seed": 43, "metrics": {"inference_loss": 4.3, "val_loss": 4.2}}],
        "spread": {"inference_loss": noise.spread([4.1, 4.3]).to_dict(), "val_loss": noise.spread([4.3, 4.2]).to_dict()}})
    ctx = record_context(lang)
    ctx["r"]["replicates"] = replicates_view(tmp_path)
    text = render("record.md.j2", ctx, lang=lang)
    assert "| 42 | 4.1 | 4.3 |" in text and "| 43 | 4.3 | 4.2 |" in text
    assert ("| seed-to-seed sd | 0.1414 | 0.07071 |" if lang == "en" else "| 种子间标准差 | 0.1414 | 0.07071 |") in text
    assert ("**Replicates** (2 runs" if lang == "en" else "**重复运行**(2 次运行") in text
