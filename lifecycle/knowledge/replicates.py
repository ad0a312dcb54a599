"""Replicates: runs of one experiment that differ only in their training seed.

    minimind new V ... --seeds 3        # three replicates (the lab's default: replicates.seeds)
    minimind replicate V --seeds 3      # bring a finished experiment to three replicates

Layout (minimind/rundir.py): runs/V/ is the experiment and its first replicate, with the
experiment's own seed; every other replicate is a whole run directory runs/V/seeds/<seed>/
with its own config.yaml (the experiment's, train.seed changed and the evaluation's and
the validation split's seeds pinned to the experiment's, so every replicate is scored on
the same documents and probes), state.json, train.log, checkpoints, metrics.jsonl and
eval.json. An experiment of an older lab is an experiment with one replicate.

Execution: each replicate is its own pipeline (lifecycle/running/pipeline.py). With GPU slots they
take one slot each, side by side, and the rest wait `queued`; on Slurm each is its own job;
on one device without slots they run one after another (a one-slot queue private to the
experiment, runs/V/seeds/.queue). A replicate's pipeline trains and evaluates its run;
the experiment is analysed once, by whichever pipeline finds every replicate evaluated
(under runs/V/.analyse.lock), so one experiment has one analysis, one record and one commit.

State (`experiment_state`): running while any replicate runs, e.g. `running (2 of 3 done)`;
`queued` while all wait; finished when all are; otherwise the first replicate that is not
(lost, failed, stopped), with the count done, so `resume V` knows what to continue.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from minimind.config import ExperimentConfig, load_config
from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import (ANALYSE_LOCK_FILE, CONFIG_FILE, EVAL_FILE, REPLICATES_DIR, SEEDS_FILE, current,
                             experiment_dir, read_json, read_state, replicate_dirs, run_label, split_label)

MAX_SEEDS = 64
QUEUE_DIR = ".queue"   # under runs/V/seeds/: the one-device queue of the experiment's replicates
DONE = ("finished", "guardrail_stopped")
ACTIVE = ("running", "queued")


# --- pure rules -------------------------------------------------------------------------

def next_seeds(first: int, have: list[int], total: int) -> list[int]:
    """The seeds to add so the experiment has `total` replicates: first+1, first+2, ... not yet used."""
    if total < 1 or total > MAX_SEEDS:
        raise UsageError(f"--seeds must be between 1 and {MAX_SEEDS}, got {total}")
    out, seed = [], first
    used = set(have)
    while len(have) + len(out) < total:
        seed += 1
        if seed not in used:
            out.append(seed)
    return out


def replicate_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The experiment's config for the replicate with `seed`: train.seed changed; the split and the
    evaluation's draws keep the experiment's seeds (an older config left them to train.seed)."""
    import copy

    out = copy.deepcopy(cfg)
    if out.data.split_seed is None:
        out.data.split_seed = cfg.train.seed
    if out.eval.draw_seed is None:
        out.eval.draw_seed = cfg.train.seed
    out.train.seed = seed
    return out


def done_count(states: list[str]) -> int:
    return sum(s in DONE for s in states)


def aggregate(states: list[str], evaluated: list[bool]) -> tuple[str, Optional[str]]:
    """(the experiment's state, the words after it) from its replicates' derived states.

    One replicate: its own state. Several: running/queued while any is active, `finished` when
    all are done (and evaluated), else the first that is not (lost, failed, stopped, drafted)."""
    if len(states) == 1:
        return states[0], None
    n, done = len(states), done_count(states)
    count = f"{done} of {n} done"
    if any(s == "running" for s in states):
        return "running", count
    if any(s == "queued" for s in states):
        return "queued", count
    if done == n:
        if all(evaluated):
            return "finished", f"{n} replicates"
        return "running", f"{count}; evaluating"
    for s in ("lost", "failed", "stopped", "unreadable", "missing", "drafted"):
        if s in states:
            which = [i for i, x in enumerate(states) if x == s]
            return s, f"{len(which)} replicate(s) {s}; {count}"
    return states[0], count


# --- reading an experiment's replicates ---------------------------------------------------

def seed_of(run_dir: Path) -> Optional[int]:
    try:
        return load_config(Path(run_dir) / CONFIG_FILE).train.seed
    except MinimindError:
        return None


def parts(lab: Lab, version: str) -> list[dict[str, Any]]:
    """Each replicate: {label, seed, dir, state, recorded (RunState)}."""
    out = []
    for run_dir in replicate_dirs(lab.run_dir(version)):
        derived, state = current(run_dir)
        out.append({"label": run_label(run_dir), "seed": seed_of(run_dir), "dir": run_dir, "state": derived,
                    "recorded": state})
    return out


def experiment_state(lab: Lab, version: str) -> tuple[str, Optional[str], list[dict[str, Any]]]:
    ps = parts(lab, version)
    state, words = aggregate([p["state"] for p in ps], [bool(p["recorded"].evaluated) for p in ps])
    return state, words, ps


def find_replicate(lab: Lab, version: str, seed: Optional[int]) -> Path:
    """runs/V for seed None; else the replicate of V with that seed (the experiment's own included)."""
    run_dir = lab.require_run(version)
    if seed is None:
        return run_dir
    for path in replicate_dirs(run_dir):
        if seed_of(path) == seed:
            return path
    seeds = ", ".join(str(seed_of(p)) for p in replicate_dirs(run_dir))
    raise UsageError(f"experiment {version} has no replicate with seed {seed} (its seeds: {seeds})")


def replicated(run_dir: Path) -> bool:
    return len(replicate_dirs(experiment_dir(run_dir))) > 1


def target(lab: Lab, name: str) -> tuple[str, list[Path], bool]:
    """What a command names: 'V' is the experiment (every replicate), 'V@SEED' one replicate.
    Returns (version, the run directories, whether one replicate was named)."""
    version, seed = split_label(name)
    if seed is None:
        return version, replicate_dirs(lab.require_run(version)), False
    return version, [find_replicate(lab, version, seed)], True


def evals(exp_dir: Path) -> list[dict]:
    """The eval.json of every evaluated replicate, in replicate order."""
    from minimind.guardrails import upgrade_eval

    out = []
    for run_dir in replicate_dirs(exp_dir):
        ev = upgrade_eval(read_json(run_dir / EVAL_FILE))
        if ev is not None:
            out.append(ev)
    return out


def side(exp_dir: Path) -> Any:
    """What minimind.verdict compares: one eval.json, a list of them for replicates, None for none."""
    found = evals(exp_dir)
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def verdict_inputs(lab: Lab, exp_dir: Path, cfg: ExperimentConfig, ev: Optional[dict]) -> tuple[Any, Any, dict[str, Any]]:
    """(new side, base side, the lab's floors): what minimind.verdict compares for an experiment.
    Each side is every evaluated replicate (`ev`, the run's own eval.json, for an unreplicated
    experiment); the lab's measured seed-to-seed floor stands in for a side's missing replicates
    (minimind/noise.py). One assembler: analyse decides on it, and the record shows the same
    rows before the analysis has written them."""
    new_side = side(exp_dir) or ev
    base_side = side(lab.run_dir(cfg.base)) if cfg.base else None
    return new_side, base_side, lab_floors(lab)


# --- the experiment's spread and the lab's floor --------------------------------------------

def summary(exp_dir: Path) -> dict[str, Any]:
    """seeds.json: each replicate's numbers and, per metric, their spread (minimind/noise.py)."""
    from minimind import noise
    from minimind.guardrails import upgrade_eval
    from minimind.verdict import all_metric_names, metric_value

    reps = []
    for run_dir in replicate_dirs(exp_dir):
        ev = upgrade_eval(read_json(run_dir / EVAL_FILE))
        if ev is None:
            continue
        names = all_metric_names(ev)
        reps.append({"seed": seed_of(run_dir), "dir": str(Path(run_dir).relative_to(Path(exp_dir).parent.parent)),
                     "metrics": {n: v for n in names if (v := metric_value(ev, n)) is not None}})
    metrics: dict[str, list[float]] = {}
    for rep in reps:
        for name, value in rep["metrics"].items():
            metrics.setdefault(name, []).append(value)
    spread = {n: s.to_dict() for n, vals in metrics.items() if len(vals) == len(reps) and (s := noise.spread(vals))}
    return {"version": Path(exp_dir).name, "seeds": [r["seed"] for r in reps], "replicates": reps, "spread": spread}


def write_summary(exp_dir: Path) -> dict[str, Any]:
    from minimind.atomic import write_json

    data = summary(exp_dir)
    write_json(Path(exp_dir) / SEEDS_FILE, data)
    return data


def lab_floors(lab: Lab) -> dict[str, Any]:
    """{metric: minimind.noise.Floor}: the pooled seed-to-seed spread over every experiment of the
    lab with 2 or more evaluated replicates (their runs/V/seeds.json). {} when none is."""
    from minimind import noise

    per: dict[str, dict[str, list[float]]] = {}
    for version in lab.versions():
        data = read_json(lab.run_dir(version) / SEEDS_FILE)
        reps = (data or {}).get("replicates") or []
        if len(reps) < 2:
            continue
        values: dict[str, list[float]] = {}
        for rep in reps:
            for name, value in (rep.get("metrics") or {}).items():
                if isinstance(value, (int, float)):
                    values.setdefault(name, []).append(float(value))
        per[version] = {n: v for n, v in values.items() if len(v) == len(reps)}
    return noise.lab_floor(per)


# --- creating and launching ------------------------------------------------------------------

# --- the analysis, once -------------------------------------------------------------------------

@contextmanager
def analyse_lock(exp_dir: Path) -> Iterator[None]:
    with open(Path(exp_dir) / ANALYSE_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def complete(exp_dir: Path) -> tuple[bool, str]:
    """(every replicate trained and evaluated, what is still missing in words)."""
    waiting = []
    for run_dir in replicate_dirs(exp_dir):
        state = read_state(run_dir)
        if state.train_outcome not in DONE or not state.evaluated:
            waiting.append(f"{run_label(run_dir)} ({state.train_outcome or state.state})")
    return not waiting, ", ".join(waiting)


def one_device_queue(exp_dir: Path) -> Path:
    return Path(exp_dir) / REPLICATES_DIR / QUEUE_DIR
