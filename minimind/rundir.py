"""One experiment's run directory `runs/V/`: the name of every file in it, and `state.json`.

Every module that reads or writes a run file takes its name from here, so a file is
renamed in one place. `state.json` is read and written through `RunState`, one dataclass
whose fields are every key the tool records (PRODUCT.md section 5); writers go through
`update_state`, a locked read-modify-write with an atomic rename, and an unknown field
name is a bug caught at the write. Readers derive the honest state with `derive_state`,
a pure function that never calls a dead run `running`: it checks the recorded pid *and*
that pid's start time (pid reuse), the exit-code file the run pipeline writes as its last
act, and the heartbeat (PRODUCT.md section 4).

state.json is local (git ignores it: it holds pids and heartbeats of this machine), so
`minimind commit` also commits `state.committed.json`, the state as of the commit without
those. A clone, which has no state.json, reads that; a state.json that is missing without
one, or that is corrupt, gives the states `missing` or `unreadable`: the experiment is
still listed, with what its committed files say, and never shown as finished or drafted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from minimind.atomic import write_json, write_text

# --- file names inside runs/V/ ------------------------------------------------------
CONFIG_FILE = "config.yaml"          # the fully resolved experiment config
STATE_FILE = "state.json"            # RunState
COMMITTED_STATE_FILE = "state.committed.json"  # committed: the state as of `minimind commit`, without this machine's processes
EXIT_CODE_FILE = "exit_code"         # the pipeline's exit status: written last, absent after kill -9
RUN_SCRIPT = "run.sh"                # rendered from templates/run.sh.j2; calls the pipeline
SBATCH_FILE = "run.sbatch"           # the Slurm job (launch.backend: slurm), from templates/run.sbatch.j2
TRAIN_LOG = "train.log"              # stdout and stderr of the run
METRICS_FILE = "metrics.jsonl"       # one JSON object per logged step: the source of truth
EVAL_FILE = "eval.json"              # evaluation of the kept checkpoint
PLAN_FILE = "plan.json"              # the agent's plan and the human's request
ANALYSIS_FILE = "analysis.json"      # the agent's analysis and the computed verdict
DIFF_FILE = "model.diff"             # models/model.py against the base snapshot (or git HEAD)
CODE_CHANGE_FILE = "code_change.json"  # a code experiment: rounds, edits, reasons, gate stages, isolation, approval
PATCH_FILE = "model.patch"           # a code experiment's change to models/model.py, as `git apply` takes it
PENDING_DIR = ".pending"             # runs/.pending/V/: the code change of V waiting for the human's approval
COMMIT_MSG_FILE = "commit_message.md"
ANALYSIS_ERROR_LOG = "analysis_error.log"  # tracebacks of analyses that failed unexpectedly after training
REVIEW_FILE = "review.json"          # the human's approval
LESSON_FILE = "lesson.json"          # a lesson proposed after a refuted or dangerous run, and the human's decision
NEXT_FILE = "next.json"              # the analysis's structured proposal for the next experiment
DS_CONFIG_FILE = "ds_config.json"    # the DeepSpeed config the trainer used (written by rank 0)
ACCELERATE_CONFIG_FILE = "accelerate_config.yaml"  # passed to accelerate launch as --config_file
NODE_COMMANDS_FILE = "nodes.sh"      # several machines: the command each other machine runs
STOP_FILE = "stop"                   # present = a stop was requested (read by every rank)
RECORD_MARK_FILE = ".record.sha256"  # sha256 of the record as last rendered (edit detection)
RENDERED_RECORD_FILE = "record.rendered.md"  # a render kept beside a record the human edited
RECORD_LAST_FILE = ".record.last.md"  # the record as last rendered: what a human edit is merged against
STATE_LOCK_FILE = ".state.lock"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pth"         # everything needed to resume
PLOTS_DIR = "plots"
AGENT_DIR = "agent"                  # the agent's call log
REPLICATES_DIR = "seeds"             # runs/V/seeds/<seed>/: the experiment's other replicates (runs/V is the first)
SEEDS_FILE = "seeds.json"            # the replicates' numbers and spread, written by the analysis
ANALYSE_LOCK_FILE = ".analyse.lock"  # held while a replicate's pipeline decides whether to analyse the experiment


# --- replicates ------------------------------------------------------------------------
# An experiment is runs/V/. Its own run is its first replicate (so a single-run experiment, and
# every experiment of an older lab, is an experiment with one replicate: nothing to migrate);
# `--seeds N` adds runs/V/seeds/<seed>/, each a whole run directory (config, state, log,
# checkpoints, metrics, eval.json) whose config differs from runs/V's in train.seed alone.

def is_replicate_dir(run_dir: Path) -> bool:
    """runs/V/seeds/<seed>: a replicate beside the experiment's own run."""
    return Path(run_dir).parent.name == REPLICATES_DIR


def experiment_dir(run_dir: Path) -> Path:
    """runs/V for runs/V itself and for any of its replicates."""
    run_dir = Path(run_dir)
    return run_dir.parent.parent if is_replicate_dir(run_dir) else run_dir


def lab_root(run_dir: Path) -> Path:
    """The lab that holds a run directory (an experiment's or a replicate's)."""
    return experiment_dir(Path(run_dir).resolve()).parent.parent


def replicate_dirs(exp_dir: Path) -> list[Path]:
    """Every run of the experiment: runs/V first, then runs/V/seeds/<seed> in seed order."""
    exp_dir = Path(exp_dir)
    folder = exp_dir / REPLICATES_DIR
    extra = []
    if folder.is_dir():
        extra = sorted((p for p in folder.iterdir() if p.name.isdigit() and (p / CONFIG_FILE).is_file()),
                       key=lambda p: int(p.name))
    return [exp_dir, *extra]


REPLICATE_SEP = "@"  # `minimind stop 1.2.0@43`: the replicate of 1.2.0 with train.seed 43


def run_label(run_dir: Path) -> str:
    """'1.2.0' for an experiment's own run, '1.2.0@43' for its replicate with seed 43."""
    run_dir = Path(run_dir)
    if is_replicate_dir(run_dir):
        return f"{experiment_dir(run_dir).name}{REPLICATE_SEP}{run_dir.name}"
    return run_dir.name


def split_label(name: str) -> tuple[str, Optional[int]]:
    """'1.2.0@43' -> ('1.2.0', 43); '1.2.0' -> ('1.2.0', None). A bad seed is a UsageError."""
    from minimind.errors import UsageError

    version, sep, seed = name.partition(REPLICATE_SEP)
    if not sep:
        return name, None
    if not seed.isdigit():
        raise UsageError(f"'{name}': a replicate is named VERSION{REPLICATE_SEP}SEED, e.g. 1.2.0{REPLICATE_SEP}43")
    return version, int(seed)


def best_checkpoint(dim: int, stage: str = "pretrain") -> str:
    """MiniMind's name for the kept model: pretrain_{dim}.pth, or full_sft_{dim}.pth for stage sft."""
    return f"{'full_sft' if stage == 'sft' else 'pretrain'}_{int(dim)}.pth"


# --- states -------------------------------------------------------------------------
FINAL_BY_TRAINER = ("stopped", "guardrail_stopped")  # states the trainer records itself before exiting
MISSING = "missing"        # no state.json and no committed state: the run's files say what they can
UNREADABLE = "unreadable"  # state.json is not valid JSON
FLAGS = ("evaluated", "analysed", "reviewed", "committed")
HEARTBEAT_S = 60  # the trainer writes state.json at least this often while training
STALE_AFTER_S = 3 * HEARTBEAT_S

# Exit codes of `training.train` and of the run pipeline.
EXIT_FINISHED = 0
EXIT_STOPPED = 10
EXIT_GUARDRAIL = 11


@dataclass(kw_only=True)
class RunState:
    """Every key of state.json. Unknown keys from other versions are kept in `extra`."""

    version: Optional[str] = None
    base: Optional[str] = None
    state: str = "drafted"            # recorded state; `derive_state` gives the honest one
    phase: Optional[str] = None       # setup / train / evaluate / analyse / done / stopped
    pid: Optional[int] = None         # the run pipeline's pid (= its process group)
    pgid: Optional[int] = None
    proc_start: Optional[int] = None  # /proc start time of pid (pid reuse)
    trainer_pid: Optional[int] = None
    started_at: Optional[float] = None
    ended_at: Optional[float] = None
    exit_code: Optional[int] = None
    heartbeat: Optional[float] = None
    step: int = 0
    total_steps: Optional[int] = None
    last_loss: Optional[float] = None
    eta_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    guardrails: dict[str, Any] = field(default_factory=dict)       # {name: {value, level}} while training
    eval_guardrails: dict[str, Any] = field(default_factory=dict)  # the same, from eval.json
    eval_time: Optional[float] = None
    train_outcome: Optional[str] = None  # finished / stopped / guardrail_stopped / failed
    stop_reason: Optional[str] = None
    error: Optional[str] = None
    resources: Optional[str] = None
    memory_plan: dict[str, Any] = field(default_factory=dict)  # the trainer's micro-batch plan (minimind.memory_plan)
    deterministic: Optional[bool] = None  # torch deterministic algorithms were on (launch.deterministic); None: not recorded
    snapshot: dict[str, Any] = field(default_factory=dict)  # {module, sha256}
    stage: Optional[str] = None       # pretrain / sft (None: written before stages existed = pretrain)
    init: dict[str, Any] = field(default_factory=dict)      # stage sft: {version, checkpoint, sha256, step}
    git: dict[str, Any] = field(default_factory=dict)       # {commit, dirty} at launch
    agent_backend: Optional[str] = None
    evaluated: bool = False
    analysed: bool = False
    analysis_failed: bool = False     # the agent's analysis or commit draft failed after training
    analysis_error: Optional[str] = None  # why (one line); `minimind analyse V` redoes the step
    reviewed: bool = False
    committed: bool = False
    commit: Optional[str] = None
    # Where the run executes (lifecycle/running/slots.py, lifecycle/running/slurm.py).
    gpus: Optional[list[int]] = None          # GPU slots held (exported as CUDA_VISIBLE_DEVICES)
    queue_position: Optional[int] = None      # 1 = next to start, while queued for slots
    waiting_for: Optional[str] = None         # what a queued run waits for, in words
    backend: Optional[str] = None             # "slurm" for a Slurm job; None = a local process
    slurm_job: Optional[str] = None           # the current Slurm job id
    slurm_jobs: list[str] = field(default_factory=list)  # every job id this run has had, oldest first
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @property
    def unreadable(self) -> bool:
        return self.state == "unknown"


_FIELDS = {f.name for f in dataclasses.fields(RunState)} - {"extra"}


def read_state(run_dir: Path) -> RunState:
    path = Path(run_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return RunState()
    except (json.JSONDecodeError, UnicodeDecodeError):
        # Writes are atomic, so this is outside damage; say so rather than guess.
        return RunState(state="unknown", error=f"{path} is not valid JSON")
    return RunState.from_dict(data if isinstance(data, dict) else {})


def has_state(run_dir: Path) -> bool:
    return (Path(run_dir) / STATE_FILE).is_file()


def is_experiment(run_dir: Path) -> bool:
    """runs/V holds an experiment: its state, its committed state or its config (state.json may be lost)."""
    run_dir = Path(run_dir)
    return any((run_dir / name).is_file() for name in (STATE_FILE, COMMITTED_STATE_FILE, CONFIG_FILE))


# Fields that describe this machine's processes: never committed, meaningless in a clone.
_LOCAL_FIELDS = ("pid", "pgid", "proc_start", "trainer_pid", "heartbeat", "eta_s", "gpus", "queue_position",
                 "waiting_for", "slurm_job")


def committed_state(derived: str, state: RunState, exit_code: Optional[int]) -> dict[str, Any]:
    """What `commit` writes to state.committed.json: the honest state, flags, outcome and the
    pipeline's exit code; no processes (pure)."""
    blank = RunState()
    kept = dataclasses.replace(state, state=derived, exit_code=exit_code, committed=True, commit=None,
                               **{name: getattr(blank, name) for name in _LOCAL_FIELDS})
    return kept.to_dict()


def _carried_on(run_dir: Path) -> RunState:
    """The state a write starts from when there is no state.json: in a clone the committed one,
    whose exit code goes back to its file so `derive_state` still reads a finished run as
    finished; else nothing (a run directory being made)."""
    committed = read_committed(run_dir)
    if committed is None:
        return RunState()
    if committed.exit_code is not None and read_exit_code(run_dir) is None:
        write_exit_code(run_dir, committed.exit_code)
    return committed


def read_committed(run_dir: Path) -> Optional[RunState]:
    data = read_json(Path(run_dir) / COMMITTED_STATE_FILE)
    return RunState.from_dict(data) if data is not None else None


def _from_files(run_dir: Path) -> RunState:
    """What a run without a readable state says about itself: config.yaml's version, base and stage,
    and which results exist. Its state stays `missing`: nothing here says how training ended."""
    import yaml

    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        config = None
    config = config if isinstance(config, dict) else {}
    init = config.get("init")
    return RunState(version=config.get("version") or run_dir.name, base=config.get("base"), state=MISSING,
                    stage=config.get("stage"), init=init if isinstance(init, dict) else {},
                    evaluated=(run_dir / EVAL_FILE).is_file(), analysed=(run_dir / ANALYSIS_FILE).is_file())


def state_note(run_dir: Path) -> Optional[str]:
    """Where the state shown comes from when it is not this machine's state.json, in words; None when it is."""
    run_dir = Path(run_dir)
    committed = (run_dir / COMMITTED_STATE_FILE).is_file()
    if has_state(run_dir):
        if not read_state(run_dir).unreadable:
            return None
        return (f"{STATE_FILE} is not valid JSON" + (f"; the state as committed is in {COMMITTED_STATE_FILE}: "
                                                     f"delete {STATE_FILE} to use it" if committed else ""))
    if committed:
        return f"no {STATE_FILE} here (a clone?): the state as committed ({COMMITTED_STATE_FILE})"
    return f"{STATE_FILE} is missing: base, stage and results are read from the run's files"


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    lock_path = Path(run_dir) / STATE_LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_state(run_dir: Path, **changes: Any) -> RunState:
    """Merge `changes` into state.json atomically; returns the new state."""
    unknown = sorted(set(changes) - _FIELDS)
    if unknown:
        raise TypeError(f"state.json has no field {', '.join(unknown)}")
    run_dir = Path(run_dir)
    with _locked(run_dir):
        state = read_state(run_dir)
        if state.unreadable:
            state = RunState()
        elif not has_state(run_dir):
            state = _carried_on(run_dir)
        state = dataclasses.replace(state, **changes)
        write_json(run_dir / STATE_FILE, state.to_dict())
        return state


# --- the exit-code file ------------------------------------------------------------

def read_exit_code(run_dir: Path) -> Optional[int]:
    try:
        text = (Path(run_dir) / EXIT_CODE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return -1


def write_exit_code(run_dir: Path, code: int) -> None:
    write_text(Path(run_dir) / EXIT_CODE_FILE, f"{int(code)}\n")


def clear_exit_code(run_dir: Path) -> None:
    for name in (EXIT_CODE_FILE, EXIT_CODE_FILE + ".tmp"):  # .tmp: the legacy bash trap's temporary
        (Path(run_dir) / name).unlink(missing_ok=True)


# --- liveness and the honest state -------------------------------------------------

def process_start_time(pid: int) -> Optional[int]:
    """Start time of `pid` in clock ticks since boot (Linux /proc), or None if gone."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, OSError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    if rest[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return int(rest[19])  # field 22 overall


def is_alive(pid: Optional[int], start_time: Optional[int]) -> bool:
    """True only if `pid` exists and started when we recorded it did (not a reused pid)."""
    if not pid or start_time is None:
        return False
    return process_start_time(pid) == start_time


def derive_state(state: RunState, exit_code: Optional[int], alive: bool) -> str:
    """The honest state of a run from its record, exit-code file and liveness (pure)."""
    recorded = state.state or "drafted"
    if recorded in (MISSING, UNREADABLE):  # never guessed from the exit code or a pid
        return recorded
    if recorded == "drafted" and not state.pid:
        return "drafted"
    if exit_code is not None:
        if recorded in FINAL_BY_TRAINER:
            return recorded
        return "finished" if exit_code == 0 else "failed"
    if alive:
        if recorded in FINAL_BY_TRAINER or recorded == "queued":
            return recorded  # queued: the run's own process waits for GPU slots
        return "running"
    return "lost"


# Slurm job states (squeue / sacct) by what they mean for the experiment.
SLURM_WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                           "SUSPENDED"})
SLURM_ACTIVE = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"})
SLURM_STOPPED = {"CANCELLED": "cancelled in Slurm (scancel)", "TIMEOUT": "Slurm time limit reached",
                 "PREEMPTED": "preempted by Slurm", "DEADLINE": "Slurm deadline reached"}
SLURM_FAILED = {"FAILED": "the Slurm job failed", "NODE_FAIL": "a node of the Slurm job failed (NODE_FAIL)",
                "OUT_OF_MEMORY": "the Slurm job ran out of memory (OUT_OF_MEMORY)", "BOOT_FAIL": "a node did not boot (BOOT_FAIL)",
                "SPECIAL_EXIT": "the Slurm job ended in SPECIAL_EXIT"}


def derive_slurm_state(state: RunState, exit_code: Optional[int], job_state: Optional[str],
                       now: Optional[float] = None) -> tuple[str, Optional[str]]:
    """(honest state, reason) of a Slurm run from its record, exit-code file and the job's Slurm state (pure).

    `job_state` is None when neither squeue nor sacct knows the job (or they did not
    answer): the exit-code file and the heartbeat decide, so a job the scheduler lost is
    `lost`, never `running`.
    """
    if job_state in SLURM_WAITING:
        return "queued", None
    if job_state in SLURM_ACTIVE:
        return "running", None
    if exit_code is not None:  # the pipeline ended and said how: its outcome, with Slurm's reason
        derived = derive_state(state, exit_code, alive=False)
        if derived == "stopped" and job_state in SLURM_STOPPED:
            return derived, f"{SLURM_STOPPED[job_state]}: stopped at its last checkpoint (step {state.step}); resumable"
        if derived == "failed" and job_state in SLURM_FAILED:
            return derived, SLURM_FAILED[job_state]
        return derived, state.stop_reason
    if job_state in SLURM_STOPPED:  # killed before the pipeline could write its exit code
        never = state.trainer_pid is None and not state.step
        reason = SLURM_STOPPED[job_state] + (" while queued; it never started" if never else
                                             f": stopped at its last checkpoint (step {state.step}); resumable")
        return "stopped", reason
    if job_state in SLURM_FAILED:
        return "failed", SLURM_FAILED[job_state]
    if job_state == "COMPLETED":
        return "failed", "the Slurm job completed without the pipeline's exit code"
    if job_state is None and state.heartbeat is not None and not is_stale(state, now):
        return "running", None  # Slurm did not answer; a fresh heartbeat says the run lives
    return "lost", "Slurm no longer knows the job and the run left no exit code"


def is_stale(state: RunState, now: Optional[float] = None) -> bool:
    """Heartbeat older than STALE_AFTER_S while the process is alive: hung, not dead."""
    beat = state.heartbeat
    return beat is not None and ((now or time.time()) - beat) > STALE_AFTER_S


def current(run_dir: Path) -> tuple[str, RunState]:
    """(derived state, recorded state) for one run directory.

    Without state.json it is the committed state (state.committed.json) or `missing`; with a
    corrupt one, `unreadable` (`state_note` says which, in words).

    A Slurm run asks the scheduler (a bounded squeue/sacct call, `minimind.slurmq`); the
    reason it gives for an ended job replaces the recorded `stop_reason` in the copy returned.
    """
    run_dir = Path(run_dir)
    if not has_state(run_dir):
        committed = read_committed(run_dir)
        if committed is not None:
            return committed.state or MISSING, committed
        return MISSING, _from_files(run_dir)
    state = read_state(run_dir)
    if state.unreadable:  # never guessed: the committed state or the files give base and flags only
        known = read_committed(run_dir) or _from_files(run_dir)
        return UNREADABLE, dataclasses.replace(known, state=UNREADABLE, error=state.error)
    exit_code = read_exit_code(run_dir)
    if state.backend == "slurm" and state.slurm_job:
        from minimind import slurmq

        derived, reason = derive_slurm_state(state, exit_code, slurmq.job_state(state.slurm_job))
        return derived, dataclasses.replace(state, stop_reason=reason or state.stop_reason)
    alive = is_alive(state.pid, state.proc_start)
    return derive_state(state, exit_code, alive), state


# --- metrics.jsonl -------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a torn last line (a crash mid-append) is skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A run's JSON file (plan, analysis, eval), or None when it is missing or torn."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
