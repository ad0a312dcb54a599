"""bench/run.py: its measuring tools are right (the full bench is run by `make bench`, not here)."""

import importlib.util
import re
from pathlib import Path

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


def test_paired_ratio_measures_the_slower_one_as_slower():
    bench = load_bench()
    small, large = torch.randn(64, 64), torch.randn(384, 384)
    result = bench.paired_ratio(lambda: large @ large, lambda: small @ small, repeats=5)
    assert result["ratio"] > 1 and result["a_s"] > result["b_s"]
