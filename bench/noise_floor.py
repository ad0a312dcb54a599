"""The lab's run-to-run noise at the demo's size: seeds of the dense and the memory preset (CPU).

In a fresh lab with the demo's settings (lifecycle/demo.py) on the bundled small data it runs

    minimind new 0.1.0 --set preset=original --seeds N        # the dense baseline
    minimind new 0.1.1 --set preset=memory   --seeds N        # the memory layer (base 0.1.0)

one after the other (each experiment's replicates take turns on the one device), then prints
one JSON, per preset and per metric (inference loss, validation loss, recall P@1 of the
memory-only and text-only probes):

  - the seed-to-seed standard deviation over the N replicates;
  - the half-width of a single run's paired-bootstrap interval: each replicate against the
    first, on the same documents and probes (the interval a single-run verdict used before
    replicates; its seed-only pairs show how often it called another seed a change);
  - how many seeds a side a claim of an X% change needs (minimind.noise.seeds_needed);

and the verdict rule's interval of memory minus dense over N vs N seeds (minimind/noise.py):
does "memory beats dense" survive the seed noise at this size. docs/RESULTS.md quotes it.

    python bench/noise_floor.py [--seeds 5] [--steps 240] [--lab /tmp/noise-bench] [--set KEY=VALUE ...]

`--seeds 2 --steps 20` runs the same path in a few minutes (the numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minimind import noise  # noqa: E402
from minimind.verdict import metric_value, paired_interval  # noqa: E402

METRICS = ("inference_loss", "val_loss", "recall.mem_only.p_at_1", "recall.text_only.p_at_1")
LOWER_IS_BETTER = {"inference_loss", "val_loss"}
PRESETS = {"original": "0.1.0", "memory": "0.1.1"}
EFFECTS = (0.01, 0.02, 0.05, 0.10)  # relative improvements a claim might make


def _wait(lab, version: str, timeout: float) -> None:
    from lifecycle.status import summary

    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        info = summary(lab, version)
        line = f"{version}: {info['state']} {info.get('state_words') or ''}".strip()
        if line != last:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
            last = line
        if info["state"] in ("failed", "lost", "stopped", "guardrail_stopped"):
            raise SystemExit(f"{version} ended {info['state']}; see {lab.run_dir(version)}/train.log")
        if info["state"] == "finished" and info["analysed"]:
            return
        time.sleep(2.0)
    raise SystemExit(f"{version} did not finish within {timeout:.0f} s")


def _run_seconds(run_dir: Path) -> float | None:
    """One replicate's own time, training and evaluation: from its pipeline's start line (after
    it waited its turn) to its eval.json."""
    import calendar
    import re

    try:
        found = re.search(r"\[pipeline\] experiment \S+: started (\S+Z)", (run_dir / "train.log").read_text())
        ended = (run_dir / "eval.json").stat().st_mtime
    except OSError:
        return None
    if not found:
        return None
    return ended - calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ"))


def preset_numbers(evs: list[dict]) -> dict:
    out = {}
    for metric in METRICS:
        values = noise.values_of(metric_value(ev, metric) for ev in evs)
        if len(values) != len(evs):
            continue
        sd = noise.sample_sd(values)
        halves = [(ci["high"] - ci["low"]) / 2 for ev in evs[1:]
                  if (ci := paired_interval(ev, evs[0], metric)) is not None]
        seed_only_changes = sum(1 for ev in evs[1:] if (ci := paired_interval(ev, evs[0], metric))
                                and (ci["low"] > 0 or ci["high"] < 0))
        mean = noise.mean(values)
        out[metric] = {
            "values": values, "mean": mean, "seed_sd": sd,
            "single_run_paired_half_width": noise.mean(halves) if halves else None,
            "seed_only_pairs_called_a_change": f"{seed_only_changes} of {len(evs) - 1}",
            "seeds_needed": {f"{e:.0%}": (noise.seeds_needed(sd, e * abs(mean)) if sd is not None and mean else None)
                             for e in EFFECTS},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=240, help="pretraining steps (the demo's default)")
    parser.add_argument("--lab", type=Path, default=None, help="lab folder (default: a new temporary one)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args(argv)

    from corpus.build import build
    from lifecycle.demo import DEMO_SETTINGS
    from lifecycle.init import init_lab
    from lifecycle.new import NewRequest, create_experiment
    from lifecycle.knowledge.replicates import evals
    from minimind.rundir import replicate_dirs
    from minimind.verdict import compare_rows

    target = args.lab or Path(tempfile.mkdtemp(prefix="minimind-noise-"))
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"{target} is not empty")
    started = time.time()
    lab = init_lab(target, DEMO_SETTINGS.format(steps=args.steps, eval_interval=max(args.steps // 3, 10)))
    build(lab.data_dir, "small", progress=False)
    for preset, version in PRESETS.items():
        req = NewRequest(version=version, goal=f"Seed-to-seed noise of the {preset} preset at the demo's size",
                         hypothesis="Replicates differing only in their seed measure the lab's run-to-run noise.",
                         base="0.1.0" if version != "0.1.0" else None, sets=[f"preset={preset}", *args.sets],
                         yes=True, seeds=args.seeds)
        for line in create_experiment(lab, req).messages:
            print(line, file=sys.stderr)
        _wait(lab, version, args.timeout)
    sides = {preset: evals(lab.run_dir(version)) for preset, version in PRESETS.items()}
    per_run = {preset: [s for d in replicate_dirs(lab.run_dir(v)) if (s := _run_seconds(d)) is not None]
               for preset, v in PRESETS.items()}
    rows = {r["metric"]: r for r in compare_rows(sides["memory"], sides["original"])}
    versus = {}
    for metric in METRICS:
        row = rows.get(metric)
        if not row or not row.get("ci"):
            continue
        ci = row["ci"]
        better = (ci["high"] < 0) if metric in LOWER_IS_BETTER else (ci["low"] > 0)
        worse = (ci["low"] > 0) if metric in LOWER_IS_BETTER else (ci["high"] < 0)
        versus[metric] = {"dense": row["base"], "memory": row["new"], "delta": row["delta"], "rel": row["rel"],
                          "low": ci["low"], "high": ci["high"], "rule": ci.get("rule"), "df": ci.get("df"),
                          "reading": "memory better" if better else ("memory worse" if worse else "within noise")}
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = {"command": " ".join(["python bench/noise_floor.py", *(argv if argv is not None else sys.argv[1:])]),
           "commit": commit, "seeds": args.seeds, "steps": args.steps, "lab": str(lab.root),
           "wall_s": round(time.time() - started), "run_s": {p: [round(s) for s in v] for p, v in per_run.items()},
           "presets": {p: preset_numbers(evs) for p, evs in sides.items()},
           "memory_minus_dense": versus}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
