"""`minimind replicate V --seeds N`: a finished experiment, usually a base, gets more replicates
(lifecycle/knowledge/replicates.py), launched now; its analysis, record and seeds.json are redone when
they end."""

from __future__ import annotations

from lifecycle.knowledge import estimate
from lifecycle.code.codechange import verify_at_launch
from lifecycle.running.launch import check_launch, create_replicates, launch_replicates
from lifecycle.knowledge.replicates import experiment_state
from minimind.config import load_config
from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.atomic import write_json
from minimind.rundir import CONFIG_FILE, REVIEW_FILE, read_json, update_state


def add(lab: Lab, version: str, total: int, yes: bool = False) -> str:
    """`minimind replicate V --seeds N`: V (finished) gets replicates up to N in all, launched now;
    its analysis, record and seeds.json are redone when they end."""
    exp_dir = lab.require_run(version)
    state, words, ps = experiment_state(lab, version)
    if state != "finished":
        raise MinimindError(f"experiment {version} is {state}" + (f" ({words})" if words else "")
                            + ": replicate adds runs to a finished experiment")
    if total <= len(ps):
        raise UsageError(f"experiment {version} already has {len(ps)} replicate(s) (seeds "
                         f"{', '.join(str(p['seed']) for p in ps)}); give --seeds above {len(ps)}")
    cfg = load_config(exp_dir / CONFIG_FILE)
    check_launch(lab, cfg)
    verify_at_launch(lab, version)  # a code experiment runs only the code the human approved
    added = total - len(ps)
    est = estimate.estimate(lab, cfg.to_dict())
    note = estimate.replicate_gate(est, added, lab.settings().preflight.compute_factor, yes)
    made = create_replicates(lab, version, total)
    # The analysis is redone once the new replicates are evaluated (the pipeline's last one does it).
    # The record the human approved and committed is then another one: its approval and the
    # committed flag no longer hold (status must not show them), and commit asks for a review.
    review = read_json(exp_dir / REVIEW_FILE)
    if review and review.get("approved"):
        write_json(exp_dir / REVIEW_FILE, {**review, "approved": False,
                                           "superseded": f"replicates added ({total} in all): review the refreshed record"})
    update_state(exp_dir, analysed=False, analysis_failed=False, analysis_error=None, reviewed=False, committed=False)
    infos = launch_replicates(lab, made)
    lines = [f"Experiment {version}: {len(made)} replicate(s) added (seeds {', '.join(p.name for p in made)}), "
             f"{total} in all; the record and verdict are refreshed when they end."]
    lines += [f"  seed {p.name}: {i.state}" + (f" (Slurm job {i.slurm_job})" if i.slurm_job else f" (pid {i.pid})")
              for p, i in zip(made, infos)]
    if note:
        lines.append(f"note: {note}")
    lines.append(f"Follow: minimind status {version}")
    return "\n".join(lines)
