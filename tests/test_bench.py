"""bench/run.py: its measuring tools are right (the full bench is run by `make bench`, not here)."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run_under_test", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_targets() -> dict[str, tuple[str, float]]:
    """The '## Targets' table of docs/PERFORMANCE.md: {key: (op, value)}."""
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8")
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    ops = {"≤": "<=", "≥": ">="}
    return {key: (ops[op], float(value))
            for key, op, value in re.findall(r"^\| `(\w+)` \| ([≤≥]) ([\d.]+) \|$", section, flags=re.M)}


def test_bench_targets_are_the_documented_ones():
    bench = load_bench()
    documented = documented_targets()
    assert len(documented) == 8
    assert documented == {key: (op, float(value)) for key, (op, value) in bench.TARGETS.items()}


def test_live_bytes_tracks_peak_of_live_storages():
    bench = load_bench()

    def work(x):
        a = x * 2  # 4 MB
        b = a + 1  # 4 MB, peak 8 MB (+ x's input not counted)
        del a
        return b.sum()  # a freed: live 4 MB + 4 bytes

    x = torch.randn(1024, 1024)
    peak = bench.peak_forward_bytes(work, x)
    assert 8 * 2**20 <= peak < 8 * 2**20 + 1024


def test_paired_ratio_measures_the_slower_one_as_slower(monkeypatch):
    """A fake clock that each function advances by a known amount: the ratio is exact, whatever the load."""
    bench = load_bench()
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])

    def takes(seconds):
        def fn():
            clock["now"] += seconds
        return fn

    result = bench.paired_ratio(takes(0.03), takes(0.01), repeats=5)
    assert result["ratio"] == pytest.approx(3.0) and result["a_s"] == pytest.approx(0.03)
    assert result["b_s"] == pytest.approx(0.01)


def test_sft_chat_bench_counts_chat_qa_per_relation():
    """bench/sft_chat.py's per-relation table comes from eval.json's per-probe hits (ids are relation:hash)."""
    spec = importlib.util.spec_from_file_location("bench_sft_chat_under_test", ROOT / "bench" / "sft_chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ev = {"per_item": {"chat_qa": {"taught": {"keys": ["capital:01", "capital:02", "borders:03", "city_population:04"],
                                              "hit": [1.0, 0.0, 1.0, 1.0]}}}}
    assert module.by_relation(ev, "taught") == {"borders": {"accuracy": 1.0, "n": 1},
                                                "capital": {"accuracy": 0.5, "n": 2},
                                                "city_population": {"accuracy": 1.0, "n": 1}}
    assert module.by_relation(ev, "held_out") == {} and module.by_relation({}, "taught") == {}
