"""The offline backend's own prose passes the checks it is held to: a walk through the README
found `review` saying that the offline agent's commit draft "quotes a number that is not in
the data given" for `model.freeze_ratio: 0.2 → 0.4` (the word "ratio" inside the setting's
name made 0.2 a train/inference ratio)."""

from __future__ import annotations

import pytest

from agent.backends import checked_offline
from agent.base import CommitContext
from agent.offline import OfflineAgent

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
