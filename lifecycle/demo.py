"""`minimind demo`: the whole loop in a fresh lab on the bundled data, on CPU, in minutes.

It does exactly what a researcher would type — init, data build, two pretraining experiments
(a dense baseline and the memory layer on top of it), an SFT experiment on each of them, wait,
review, commit, status, compare —
through the same library calls the commands use, with a model small enough for a
2-core machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

from minimind.errors import GateRefused, MinimindError
from minimind.rundir import ANALYSIS_FILE, TRAIN_LOG, read_json

DEMO_SETTINGS = """\
# minimind demo lab: a small model so the whole loop runs on a CPU in minutes.
model:
  preset: memory
  dim: 128
  n_layers: 2
  n_heads: 4
  n_kv_heads: 2
  max_seq_len: 128
  knowledge_num: 4096
  knowledge_length: 16
  knowledge_dim: 64
  num_candidates: 16
  freeze_ratio: 0.2
train:
  epochs: 4
  batch_size: 16
  learning_rate: 0.002
  warmup_steps: 10
  max_steps: {steps}
  log_interval: 10
  eval_interval: {eval_interval}
  save_interval: {eval_interval}
eval:
  num_samples: 12
  max_new_tokens: 32
  max_val_batches: 10
  chat_probes: 40
swanlab:
  mode: disabled
agent:
  backend: offline
"""

EXPERIMENTS = [
    ("0.1.0", ["preset=original"], "Dense SwiGLU baseline on the bundled country and city facts",
     "A dense MiniMind-style model learns the fact text: inference loss falls well below the uniform "
     "ln(6400) = 8.76 nats.", "inference_loss < 8.76"),
    ("0.1.1", ["preset=memory"], "Replace the feed-forward layer by the human-readable memory bank",
     "Reading facts from the memory bank through product keys lowers inference loss against the dense baseline.",
     "inference_loss < base"),
]
# Step three: SFT on the bundled conversations from each pretrain base, so the lab's open question
# (the memory model's SFT effect against the dense baseline's) is measured in the compare table.
SFT_EXPERIMENTS = [
    ("0.1.2", "0.1.1", "SFT of the memory model on the bundled question-and-answer conversations",
     "SFT teaches the memory model to answer in chat format: chat QA accuracy on the taught facts rises above its "
     "pretrain base.", "chat_qa.taught.accuracy > base"),
    ("0.1.3", "0.1.0", "SFT of the dense baseline on the same conversations, for comparison",
     "SFT teaches the dense baseline to answer in chat format: chat QA accuracy on the taught facts rises above its "
     "pretrain base.", "chat_qa.taught.accuracy > base"),
]


def _wait(lab, version: str, console) -> str:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from minimind.rundir import current

    run_dir = lab.run_dir(version)
    with Progress(TextColumn(f"[bold]{version}[/] {{task.fields[phase]}}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(version, total=None, phase="starting", loss="—")
        while True:
            derived, state = current(run_dir)
            loss = state.last_loss
            progress.update(task, completed=state.step or 0, total=state.total_steps,
                            phase=state.phase or "train", loss=f"{loss:.3f}" if isinstance(loss, (int, float)) else "—")
            if derived != "running":
                return derived
            time.sleep(1.0)


def run_demo(directory: Optional[Path], steps: Optional[int], sft_steps: Optional[int] = None,
             sets: tuple[str, ...] = (), sft_sets: tuple[str, ...] = (), yes: bool = False) -> None:
    """sets: --set items for every experiment (a pretraining experiment's model is the SFT's);
    sft_sets: for the SFT experiments only (their learning rate, epochs, chat probes);
    yes: `new --yes` for each, when the sizes asked for grow compute past preflight.compute_factor."""
    from rich.console import Console

    from lifecycle.commit import commit_experiment
    from lifecycle.compare import compare_experiments
    from lifecycle.knowledge.estimate import GATE_ADVICE
    from lifecycle.knowledge.bases import check_sets
    from lifecycle.new import NewRequest, create_experiment
    from lifecycle.review import review_experiment
    from corpus.build import build, print_summary
    from lifecycle.init import init_lab
    from lifecycle.status import show_status

    console = Console()
    started = time.time()
    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="minimind-demo-"))
    steps = steps or 240
    sft_steps = sft_steps or max(steps // 2, 20)
    if steps < 20 or sft_steps < 20:
        raise MinimindError("--steps and --sft-steps must be at least 20")
    console.rule("1. a fresh lab")
    lab = init_lab(target, DEMO_SETTINGS.format(steps=steps, eval_interval=max(steps // 3, 10)))
    console.print(f"$ minimind init {lab.root}")
    check_sets(lab, [*sets, *sft_sets])  # a typo is refused now, not after the data build and the first run
    console.rule("2. the bundled data")
    console.print("$ minimind data build --size small")
    print_summary(build(lab.data_dir, "small", progress=False), console)
    # The human's --set come after the demo's own, so they win (as on `new`). The SFT experiments
    # get them too: model, train and data come from the base anyway, but eval, guardrails and
    # launch are the lab's policy (lifecycle.knowledge.bases.base_config), and an SFT evaluated on other
    # chat probes than its base would have no paired interval. --sft-set comes last.
    plan = [(v, [*own, *sets], goal, hyp, expect, None) for v, own, goal, hyp, expect in EXPERIMENTS]
    plan += [(v, [f"max_steps={sft_steps}", *sets, *sft_sets], goal, hyp, expect, base)
             for v, base, goal, hyp, expect in SFT_EXPERIMENTS]
    for number, (version, items, goal, hypothesis, expect, sft_base) in enumerate(plan, start=3):
        console.rule(f"{number}. experiment {version}" + (f" (SFT of {sft_base})" if sft_base else ""))
        console.print(f"$ minimind new {version} " + (f"--stage sft --base {sft_base} " if sft_base else "")
                      + f"--goal {goal!r} --hypothesis {hypothesis!r} "
                      + " ".join(f"--set {s}" for s in items) + (f" --expect {expect!r}" if expect else "")
                      + (" --yes" if yes else ""))
        try:
            result = create_experiment(lab, NewRequest(version=version, goal=goal, hypothesis=hypothesis, expect=expect,
                                                       sets=list(items), base=sft_base,
                                                       stage="sft" if sft_base else "pretrain", yes=yes))
        except GateRefused as exc:  # the demo has no --no-launch: say what the demo's own user can do
            raise GateRefused(str(exc).replace(GATE_ADVICE, f"Run the demo again with --yes (the lab {lab.root} "
                                               "keeps what finished)")) from None
        for line in result.messages:
            console.print(line)
        final = _wait(lab, version, console)
        if final not in ("finished", "guardrail_stopped"):
            log = lab.run_dir(version) / TRAIN_LOG
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            console.print("\n".join(tail), markup=False)
            raise MinimindError(f"demo experiment {version} ended {final}; see {log}")
        console.print(f"{version}: {final}")
    versions = [v for v, *_ in plan]
    console.rule(f"{len(plan) + 3}. review and commit")
    for version in versions:
        console.print(f"$ minimind review {version} --approve")
        review_experiment(lab, version, approve=True, edit=False, show=False)  # the record is long; verdicts follow
        console.print(f"$ minimind commit {version}")
        console.print(commit_experiment(lab, version, yes=False))
    console.rule("status")
    show_status(lab, None, as_json=False)
    console.rule("history")
    console.print("$ minimind history")
    from lifecycle.history import show_history

    show_history(lab, as_json=False)
    console.rule("compare")
    compare_experiments(lab, versions, None)
    for version in versions:
        verdict = (read_json(lab.run_dir(version) / ANALYSIS_FILE) or {}).get("verdict_info", {})
        console.print(f"{version}: hypothesis {verdict.get('verdict')} — {verdict.get('reason')}")
    console.print(f"\nDemo lab: {lab.root}  (records in experiment/, git log for the commits) — "
                  f"{time.time() - started:.0f} s in all")
