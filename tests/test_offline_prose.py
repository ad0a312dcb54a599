"""The offline backend's prose: how it reads a hypothesis, that its conclusion cites the metric
the verdict was decided on, that the prose checker accepts the verdict words code writes, and
that its own prose passes the checks it is held to. A walk through the README
found `review` saying that the offline agent's commit draft "quotes a number that is not in
the data given" for `model.freeze_ratio: 0.2 → 0.4` (the word "ratio" inside the setting's
name made 0.2 a train/inference ratio)."""

from __future__ import annotations

import pytest

from agent.backends import checked_offline
from agent.base import CommitContext
from agent.offline import OfflineAgent
from minimind.phrases import phrase
from minimind.verdict import decide, result_lines
from verdict_data import BASE, shifted

# settings whose names hold a metric's word (ratio, entropy, loss, repetition)
CHANGES = [("model.freeze_ratio", 0.2, 0.4), ("guardrails.memory_entropy.danger", 2.0, 1.5),
           ("guardrails.train_loss.danger", 0.1, 0.05), ("guardrails.repetition_rate.danger", 0.8, 0.85)]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("change", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_config_change_named_like_a_metric_is_quoted_from_the_data(tmp_path, change, lang):
    ctx = CommitContext(version="1.4.8", goal="Freeze more", hypothesis="h", verdict="inconclusive",
                        verdict_reason="no base", files=["runs/1.4.8/config.yaml"], config_changes=[change],
                        result_lines=[], next_steps=[], model_changed=False, lang=lang,
                        facts={"eval": {"train_inference_ratio": 0.7998, "memory_entropy": 0.2033}})
    draft = OfflineAgent().draft_commit(ctx)
    checked = checked_offline("draft_commit", ctx, draft)
    assert checked.notes == draft.notes, checked.notes
    assert str(change[2]) in checked.improvements[1] and str(change[1]) in checked.core_changes["runs/1.4.8/config.yaml"][0]


def test_a_number_the_data_does_not_hold_is_still_refused(tmp_path):
    ctx = CommitContext(version="1.4.8", goal="g", hypothesis="h", verdict="inconclusive", verdict_reason="r",
                        files=[], config_changes=[("model.freeze_ratio", 0.2, 0.4)], result_lines=[], next_steps=[],
                        model_changed=False, facts={"eval": {"train_inference_ratio": 0.7998}})
    draft = OfflineAgent().draft_commit(ctx)
    import dataclasses

    lying = dataclasses.replace(draft, improvements=["the train/inference ratio 3.5 is far too high"])
    assert checked_offline("draft_commit", ctx, lying).notes


def test_offline_pairs_in_text():
    from agent.offline import pairs_in_text

    assert pairs_in_text("try freeze_ratio=0.4, and train.learning_rate = 1e-3; dim=256)") == [
        ("freeze_ratio", 0.4), ("train.learning_rate", 0.001), ("dim", 256)]
    assert pairs_in_text("no pairs here") == []


@pytest.mark.parametrize("verdict", ["supported", "refuted", "inconclusive"])
def test_the_prose_checker_accepts_the_chinese_verdict_words_code_writes(verdict):
    from agent.prose import known_values, problems, verdict_sentence
    from lifecycle.document.draft import commit_title

    _, reason = decide("降低推理损失", "inference_loss < base", shifted(-1.0), BASE, lang="zh")
    texts = {"line": result_lines([], {}, verdict, reason, lang="zh")[0],
             "sentence": verdict_sentence(verdict, reason, "zh"), "meaning": phrase(f"offline.m_{verdict}", "zh"),
             "title": commit_title("实验 0.1.1:记忆层", "0.1.1", verdict, "zh")}
    assert problems(texts, verdict, known_values({"eval": shifted(-1.0), "base_eval": BASE})) == {}
    assert "criteria" not in reason and "标准来自预期结果" in reason and "置信区间" in reason
    # what the offline agent writes in zh passes the number check: a ratio is not an inference loss,
    # and "95% 置信区间" is the interval's level
    zh = {"inference": phrase("offline.inference", "zh", val="4.2", inf="3.15", ratio="0.95", rep="30.0%", d2="—"),
          "interval": f"val_loss: 4.2 → 3.2 ({'95% 置信区间 [-1.2, -0.8]'})"}
    assert problems(zh, verdict, known_values({"eval": {**shifted(-1.0), "train_inference_ratio": 0.95},
                                               "base_eval": BASE})) == {}



def test_offline_conclusion_cites_the_metric_the_verdict_was_decided_on_first():
    """An SFT run is decided on chat QA; its conclusion named only the inference loss SFT raised."""
    from agent.base import AnalysisContext
    from agent.offline import OfflineAgent

    ci = {"low": 0.33, "high": 0.48, "n": 500, "confidence": 0.95}
    rows = [{"metric": "inference_loss", "base": 1.77, "new": 7.51, "delta": 5.74, "better": False,
             "ci": {"low": 5.3, "high": 6.1, "n": 12, "confidence": 0.95}},
            {"metric": "chat_qa.taught.accuracy", "base": 0.1, "new": 0.508, "delta": 0.408, "better": True, "ci": ci}]
    ctx = AnalysisContext(version="0.1.2", base="0.1.1", goal="g", hypothesis="SFT teaches the facts",
                          expect="chat_qa.taught.accuracy > base", state="finished", stop_reason=None,
                          config_changes=[], metrics_summary={"steps": 10, "first_loss": 8.7, "last_loss": 0.5},
                          eval={}, base_eval={}, comparison=rows, verdict="supported",
                          verdict_reason="chat_qa.taught.accuracy base 0.1 → 0.508: met", guardrails={},
                          memory_presets=("memory", "hybrid"))
    conclusion = OfflineAgent().analyse(ctx).conclusion
    assert conclusion.startswith("Against 0.1.1: chat_qa.taught.accuracy 0.1 → 0.508 (Δ 95% CI [+0.33, +0.48])"), conclusion
    assert conclusion.index("chat_qa.taught.accuracy") < conclusion.index("inference_loss")
