"""The child process that runs code minimind did not write, and what isolates it.

Candidate model code (the agent's, or a human's patch) is imported only here, in a child
process, never in minimind's own. The child gets:
- an environment of a few plain variables: no ANTHROPIC_API_KEY, no token, no secret;
- no network, through a new network namespace (`unshare -n`), where the system permits it;
- resource limits (setrlimit): address space, CPU seconds, processes, file size, open files;
- a process count bound by a pids cgroup where the system permits one (RLIMIT_NPROC is not
  enforced for root, so under root the cgroup is what stops a fork loop);
- its own session and process group, killed whole when the wall-clock limit passes.

What applied is detected on each machine and returned in `ChildRun.isolation`, which the
record keeps. This is isolation for honest mistakes and obvious misbehaviour on the lab's
own machine, not a hardened sandbox: the child runs as the same user, can read what that
user reads, and writes within its file-size limit wherever that user can write.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

# The only variables the child sees; everything else (keys, tokens, proxies) stays behind.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 120.0
    cpu_s: int = 120
    address_space: int = 8 << 30     # torch reserves a lot of virtual memory at import
    processes: int = 64              # threads count too
    file_size: int = 64 << 20
    open_files: int = 256


@dataclass
class ChildRun:
    returncode: Optional[int]
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    isolation: dict

    @property
    def signal_name(self) -> Optional[str]:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None


@lru_cache(maxsize=1)
def network_isolation() -> tuple[tuple[str, ...], str]:
    """(command prefix, what it gives): `unshare -n` when it works here, else nothing."""
    unshare = shutil.which("unshare")
    if unshare:
        try:
            done = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
            if done.returncode == 0:
                return (unshare, "-n"), "unshare -n: a new network namespace with only a loopback interface (down)"
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["refused"]
            return (), f"none: unshare -n is not permitted here ({why[0][:120]})"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return (), f"none: unshare -n failed ({type(exc).__name__})"
    return (), "none: unshare is not installed"


def _pids_cgroup(limit: int) -> Optional[Path]:
    """A fresh pids cgroup (v1) with pids.max = limit, or None where this process may not make one."""
    if not PIDS_CGROUP_ROOT.is_dir():
        return None
    path = PIDS_CGROUP_ROOT / f"minimind-gate-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(limit))
        return path
    except OSError:
        try:
            path.rmdir()
        except OSError:
            pass
        return None


def _remove_cgroup(path: Optional[Path]) -> None:
    if path is None:
        return
    for _ in range(50):  # the killed processes leave the group a moment after the signal
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONHASHSEED": "0"})
    env.update(extra or {})
    return env


def run_child(argv: list[str], cwd: Path, limits: Limits = Limits(), *, pythonpath: Optional[str] = None,
              secrets: tuple[str, ...] = ()) -> ChildRun:
    """Run `python argv...` under the isolation this machine permits; returns what happened.

    The child's output has every string of `secrets` replaced, in case one reached it anyway."""
    prefix, network = network_isolation()
    cgroup = _pids_cgroup(limits.processes)
    env = clean_env({"HOME": str(cwd), "TMPDIR": str(cwd), **({"PYTHONPATH": pythonpath} if pythonpath else {})})

    def limit_child() -> None:  # runs in the child between fork and exec
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        for which, value in ((resource.RLIMIT_AS, limits.address_space), (resource.RLIMIT_NPROC, limits.processes),
                             (resource.RLIMIT_FSIZE, limits.file_size), (resource.RLIMIT_NOFILE, limits.open_files),
                             (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        # SIGXCPU at the soft limit (reported as such), SIGKILL at the hard one a little later
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))

    isolation = {
        "network": network,
        "environment": f"only {', '.join(sorted(env))}: no API key or other secret",
        "rlimits": {k: v for k, v in asdict(limits).items() if k != "wall_s"},
        "processes": (f"pids cgroup, at most {limits.processes} tasks" if cgroup is not None else
                      f"RLIMIT_NPROC {limits.processes}" + (" (not enforced for root: the wall-clock kill of the "
                                                           "process group bounds a fork loop)" if os.geteuid() == 0 else "")),
        "process_group": f"own session, the whole group killed after {limits.wall_s:g}s",
        "user": "the same user as minimind (no privilege drop)",
    }
    start = time.monotonic()
    proc = subprocess.Popen([*prefix, sys.executable, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=limit_child)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the child left running in its group
        except (ProcessLookupError, PermissionError):
            pass
        _remove_cgroup(cgroup)
    text_out, text_err = (redact(b.decode("utf-8", "replace")[-20_000:], secrets) for b in (out, err))
    return ChildRun(proc.returncode, timed_out, text_out, text_err, time.monotonic() - start, isolation)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    return text


def known_secrets() -> tuple[str, ...]:
    """Values of this process's environment that look like secrets: they must never reach a
    record, a tool result or a log even if a child printed them."""
    words = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
    return tuple(v for k, v in os.environ.items() if any(w in k.upper() for w in words) and len(v) >= 8)
