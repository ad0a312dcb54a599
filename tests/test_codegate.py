"""The code gate (lifecycle/code/codegate.py): static stages in this process, the rest in an
isolated child. Every candidate is a real edit of the living models/model.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import code_candidates as cc
from lifecycle.code import codegate, codestatic
from lifecycle.code.codegate import CodeChange
from lifecycle.code.sandbox import Limits
from minimind.errors import UsageError

EVERYWHERE = [(1, 10**6, "the experiment's change")]
SECRET = "sk-ant-gate-test-0123456789-SECRET"


@pytest.fixture(scope="module")
def base_model():
    from models.model import ModelConfig

    return ModelConfig(knowledge_num=1024).to_dict()


def _gate(candidate, base_model, change=cc.GATE_CHANGE, sets=None, reasons=EVERYWHERE, **kw):
    return codegate.validate(cc.base(), candidate, change=CodeChange.from_dict(change) if change else None,
                             reasons=reasons, base_model=base_model,
                             model_sets={"memory_gate": True} if sets is None else sets, **kw)


def _stages(report):
    return [(s["stage"], s["status"]) for s in report.stages]


def test_a_learnable_gate_passes_every_stage(base_model):
    report = _gate(cc.apply(cc.base(), cc.GATE), base_model)
    assert [s for s, _ in _stages(report)] == ["scope", "parse", "lint", "policy", "interface", "touched", "settings",
                                               "load", "checks", "effect", "smoke"]
    assert report.ok, report.refusal()
    assert report.new_settings == ["memory_gate"] and report.plan_config["memory_gate"] is True
    assert set(report.touched) == {"Block.__init__", "Block.forward", "ModelConfig"}
    effect = next(s for s in report.stages if s["stage"] == "effect")
    assert effect["items"][0]["default_vs_base"] == 0.0 and "differs" in effect["detail"]
    checks = next(s for s in report.stages if s["stage"] == "checks")
    assert {r["id"]: r["status"] for r in checks["items"]}["param_count"] == "passed"
    assert "plus 2 the change adds (layers.0.memory_gate" in next(r["detail"] for r in checks["items"] if r["id"] == "param_count")
    assert "network" in report.isolation and "ANTHROPIC" not in report.isolation["environment"]
    assert len(report.hunks) == 3 and all(h["reasons"] for h in report.hunks)


def test_broken_causality_fails_the_check_with_its_lesson(base_model):
    report = _gate(cc.apply(cc.base(), cc.LEAK), base_model, change={**cc.GATE_CHANGE, "touches": ["Attention.forward"],
                                                                      "new_settings": []}, sets={})
    bad = report.failure
    assert bad["stage"] == "checks" and "causality" in bad["detail"] and "sees the future" in bad["detail"]
    assert "Position t never sees tokens after t" in report.refusal()


@pytest.mark.parametrize("code", [
    'import subprocess\nsubprocess.run(["touch", "MARKER"])',
    '__import__("os").system("touch MARKER")',
    'getattr(torch, "lo" + "ad")("MARKER")',
    'torch.os.system("touch MARKER")',
])
def test_escape_attempts_are_refused_before_anything_runs(base_model, tmp_path, code):
    marker = tmp_path / "marker"
    lines = code.replace("MARKER", str(marker)).splitlines()
    imports = [line for line in lines if line.startswith("import ")]
    body = "\n".join(line for line in lines if not line.startswith("import "))
    edits = cc.in_forward(body) + (cc.at_top("\n".join(imports)) if imports else [])
    report = _gate(cc.apply(cc.base(), edits), base_model, change={**cc.GATE_CHANGE, "touches": ["MiniMindLM.forward"],
                                                                    "new_settings": []}, sets={})
    assert report.failure["stage"] == "policy", report.stages
    assert report.isolation is None  # no child was started
    assert not marker.exists()


def test_module_level_code_is_refused_by_the_policy(base_model):
    report = _gate(cc.apply(cc.base(), cc.at_top("while True:\n    pass")), base_model)
    assert report.failure["stage"] == "policy" and "module-level While" in report.failure["detail"]


def test_a_feature_that_changes_nothing_is_refused(base_model):
    report = _gate(cc.apply(cc.base(), cc.NO_EFFECT), base_model, change={**cc.GATE_CHANGE, "touches": ["ModelConfig"]})
    assert report.failure["stage"] == "effect" and "changes nothing" in report.failure["detail"]


def test_a_silent_change_of_the_default_path_is_refused(base_model):
    candidate = cc.apply(cc.base(), cc.HALVED)
    change = {**cc.GATE_CHANGE, "touches": ["Block.forward"], "new_settings": []}
    report = _gate(candidate, base_model, change=change, sets={})
    assert report.failure["stage"] == "effect" and "did not declare changes_default" in report.failure["detail"]
    declared = _gate(candidate, base_model, change={**change, "changes_default": True}, sets={})
    assert declared.ok, declared.refusal()
    effect = next(s for s in declared.stages if s["stage"] == "effect")
    assert "skipped as declared (changes_default)" in effect["detail"]


# --- the static stages, one by one --------------------------------------------------------

def test_scope_refuses_empty_large_unreasoned_and_other_files():
    text = cc.base()
    assert "empty" in codestatic.scope(text, text, EVERYWHERE).detail
    grown = text + "".join(f"X_{i} = {i}\n" for i in range(300))
    assert "at most 200" in codestatic.scope(text, grown, EVERYWHERE).detail
    gated = cc.apply(text, cc.GATE)
    only_first = [(70, 120, "the new setting")]  # ModelConfig's lines: the Block hunks have no reason
    stage = codestatic.scope(text, gated, only_first)
    assert stage.failed and "2 hunk(s) of the diff have no reason" in stage.detail
    assert codestatic.scope(text, gated, EVERYWHERE, files=("models/model.py", "training/train.py")).failed


def test_parse_reports_the_line():
    broken = cc.apply(cc.base(), [("    def memory_layers(self)", "    def memory_layers(self")])
    stage, tree = codestatic.parse(broken)
    line = next(i for i, t in enumerate(broken.splitlines(), 1) if "def memory_layers(self" in t)
    assert tree is None and stage.failed and f"line {line}" in stage.detail


def test_lint_reports_only_new_errors():
    text = cc.base()
    with_old_error = text + "\ndef _old():\n    return undefined_old\n"
    new = with_old_error + "\ndef _new():\n    return undefined_new\n"
    assert not codestatic.lint(with_old_error, with_old_error).failed
    stage = codestatic.lint(with_old_error, new)
    assert stage.failed and "undefined_new" in stage.detail and "undefined_old" not in stage.detail


def test_interface_touched_and_settings_name_what_is_wrong():
    import ast

    text = cc.base()
    base_tree = ast.parse(text)
    renamed = ast.parse(text.replace("    def memory_stats(self", "    def memory_statistics(self"))
    assert "MiniMindLM.memory_stats" in codestatic.interface(base_tree, renamed).detail
    gated = ast.parse(cc.apply(text, cc.GATE))
    extra = codestatic.touched(base_tree, gated, ["Block.__init__"])
    assert extra.failed and extra.items == ["Block.forward"]
    assert not codestatic.touched(base_tree, gated, ["Block"]).failed
    assert codestatic.settings(base_tree, gated, []).items == ["memory_gate"]
    removed = ast.parse(text.replace("    diversity_loss_weight: float", "    diversity_weight: float"))
    assert "removes ModelConfig field(s) diversity_loss_weight" in codestatic.settings(base_tree, removed, None).detail


def test_the_lab_s_own_checks_of_the_base_are_not_held_against_a_change():
    import ast

    tree = ast.parse(cc.base())  # the living file calls getattr(self, name): the lab's code, not the change's
    assert codestatic.policy(tree, tree).status == "passed"
    assert codestatic.policy(tree).failed


def test_the_model_patch_applies_with_git(tmp_path):
    import subprocess

    gated = cc.apply(cc.base(), cc.GATE)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.py").write_text(cc.base(), encoding="utf-8")
    (tmp_path / "model.patch").write_text(codestatic.unified_diff(cc.base(), gated), encoding="utf-8")
    subprocess.run(["git", "apply", "model.patch"], cwd=tmp_path, check=True)
    assert (tmp_path / "models" / "model.py").read_text(encoding="utf-8") == gated


def test_code_change_is_validated():
    assert CodeChange.from_dict(cc.GATE_CHANGE).setting_names == ["memory_gate"]
    for bad in ({**cc.GATE_CHANGE, "touches": []}, {**cc.GATE_CHANGE, "touches": ["os.system()"]},
                {**cc.GATE_CHANGE, "extra": 1}, {**cc.GATE_CHANGE, "changes_default": "yes"},
                {**cc.GATE_CHANGE, "new_settings": [{"name": "X", "type": "bool", "default": 1, "meaning": ""}]}):
        with pytest.raises(UsageError):
            CodeChange.from_dict(bad)


# --- the child: runaway code and secrets (straight to the child: the policy would refuse them first) ----

TIGHT = Limits(wall_s=20, cpu_s=6, file_size=1 << 20, processes=48)


def _child(candidate, base_model, limits=TIGHT):
    return codegate.run_checks_in_child(cc.base(), candidate, base_model, {}, None, changes_default=False,
                                        limits=limits)


def _leftovers(tag: str) -> list[int]:
    """Processes still alive whose command line carries the tag and whose gate run is over (its
    work folder, named in the command line, is removed). Another test's child still running in a
    parallel worker has its folder, and is not this test's leftover."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(tag.encode() in a for a in args) and not any(
                    a.endswith(b"request.json") and Path(a.decode()).exists() for a in args):
                found.append(int(proc.name))
    return found


@pytest.mark.parametrize("code, expect", [
    ("while True:\n    pass", ("RLIMIT_CPU", "did not finish within")),
    ("import os\nwhile True:\n    if os.fork() == 0:\n        import time\n        time.sleep(60)",
     ("BlockingIOError", "Resource temporarily unavailable", "did not finish within")),
    ('with open("huge.bin", "wb") as f:\n    f.write(b"x" * (64 << 20))', ("File too large", "RLIMIT_FSIZE")),
])
def test_runaway_code_is_bounded_killed_and_reported(base_model, tmp_path, code, expect):
    start = time.monotonic()
    child = _child(cc.apply(cc.base(), cc.at_top(code)), base_model)
    elapsed = time.monotonic() - start
    bad = child["stages"][-1]
    assert bad["stage"] == "load" and bad["status"] == "failed"
    # the CPU limit or the wall clock (whichever comes first on a busy machine); the pids
    # cgroup refusing a fork (or the wall clock killing the whole group); the file-size limit
    assert any(e in bad["detail"] for e in expect), bad
    assert elapsed < TIGHT.wall_s + 10
    time.sleep(0.2)
    assert _leftovers("lifecycle.code.codegate_child") == []


def test_a_secret_never_leaves_the_child(base_model, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("OTHER_SERVICE_TOKEN", SECRET + "-2")
    code = ('import os\nraise RuntimeError("key=" + os.environ.get("ANTHROPIC_API_KEY", "absent") + " env="'
            ' + ",".join(sorted(os.environ)))')
    child = _child(cc.apply(cc.base(), cc.at_top(code)), base_model)
    text = json.dumps(child)
    assert "key=absent" in text and SECRET not in text
    assert "ANTHROPIC" not in child["stages"][-1]["detail"] and "OTHER_SERVICE_TOKEN" not in text


def test_the_network_is_cut_where_the_system_permits(base_model):
    code = ('import socket\ntry:\n    socket.create_connection(("1.1.1.1", 53), timeout=2)\n    NET = "open"\n'
            'except OSError as e:\n    NET = "closed"\nraise RuntimeError("net=" + NET)')
    child = _child(cc.apply(cc.base(), cc.at_top(code)), base_model)
    if child["isolation"]["network"].startswith("unshare -n"):
        assert "net=closed" in child["stages"][-1]["detail"]
    else:
        pytest.skip(child["isolation"]["network"])
