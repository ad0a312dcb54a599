"""minimind's command line: parse, call one library function, map errors to exit codes.

Heavy libraries (torch, anthropic, swanlab, gitpython) are imported only inside the
commands that need them, so `minimind --help` and `minimind status` stay fast.
Exit codes: 0 done, 1 error, 2 usage error, 3 refused by a gate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.backends import CHOICES as AGENT_CHOICES
from minimind import __version__
from minimind.errors import MinimindError
from minimind.undo import Terminated


class Group(click.Group):
    """Turns MinimindError into a one-line message and its exit code (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MinimindError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Terminated as exc:  # SIGTERM/SIGHUP: the verb has undone its writes (minimind/undo.py)
            click.echo(f"Interrupted: {exc}.", err=True)
            ctx.exit(exc.exit_code)


def _lab():
    """The current lab, its settings validated (a typo in minimind.yaml stops every command)."""
    from minimind.lab import find_lab

    lab = find_lab()
    lab.settings()
    return lab


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(version=__version__, prog_name="minimind")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """minimind: run numbered memory-layer LM experiments from a goal and a hypothesis.

    \b
    Example:
      minimind init mylab && cd mylab
      minimind data build --size small
      minimind new 0.1.0 --goal "baseline" --hypothesis "val loss below 4" --set max_steps=200
      minimind status
    """
    ctx.obj = {"debug": debug}


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a lab in DIRECTORY: a git repo with minimind.yaml, models/, templates/, runs/.

    \b
    Example:
      minimind init ~/labs/memory-bank
    """
    from lifecycle.init import init_lab

    lab = init_lab(directory)
    click.echo(f"Created lab {lab.root}")
    import shlex

    click.echo(f"Next: cd {shlex.quote(str(lab.root))} && minimind data build --size small")


@main.group()
def data() -> None:
    """Build the bundled fact corpus, or prepare your own data."""


@data.command("build")
@click.option("--size", type=click.Choice(["small", "full"]), default="small", show_default=True,
              help="small: a few thousand facts in seconds; full: >= 50,000 fact sentences.")
def data_build(size: str) -> None:
    """Build pretrain.jsonl, knowledge.json, probes.json and tokenizer.json into data/.

    \b
    Example:
      minimind data build --size full
    """
    from lifecycle.data import build_data

    build_data(_lab(), size)


@data.command("prepare")
@click.option("--pretrain", "pretrain", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Pretraining JSONL, one {\"text\": ...} per line.")
@click.option("--sft", "sft", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="SFT JSONL, one {\"conversations\": [{\"role\", \"content\"}, ...]} per line (sft_mini_512.jsonl).")
@click.option("--chat-template", "chat_template", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="tokenizer_config.json whose chat_template renders --sft conversations (default: MiniMind2's).")
@click.option("--knowledge", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="T-REx knowledge JSON array for the memory bank.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="tokenizer.json (default: the lab's data.tokenizer).")
@click.option("--knowledge-num", type=int, default=None, help="Bank rows to prepare (default: the lab's model setting).")
@click.option("--knowledge-length", type=int, default=None, help="Tokens per bank row (default: the lab's model setting).")
def data_prepare(pretrain: Path | None, sft: Path | None, chat_template: Path | None, knowledge: Path | None,
                 tokenizer: Path | None, knowledge_num: int | None, knowledge_length: int | None) -> None:
    """Tokenize your own data into the lab's cache (streaming, content-keyed).

    \b
    Example:
      minimind data prepare --pretrain ~/data/merged_pretrain.jsonl \\
          --knowledge ~/data/sentence_trex_data.json --tokenizer ~/minimind/tokenizer.json
      minimind data prepare --sft ~/data/sft_mini_512.jsonl --tokenizer ~/minimind/tokenizer.json
    """
    from lifecycle.data import prepare

    prepare(_lab(), pretrain, knowledge, tokenizer, knowledge_num, knowledge_length, sft=sft,
            chat_template=chat_template)


@main.command()
@click.argument("version")
@click.option("--goal", default=None, help="What this experiment is for (stored verbatim; required unless --from-proposal).")
@click.option("--hypothesis", default=None, help="What you expect and why (stored verbatim; required unless --from-proposal).")
@click.option("--base", default=None, help="Base experiment (default: the highest finished version below VERSION).")
@click.option("--expect", default=None, help="Expected result, e.g. 'inference_loss < base' or 'recall.mem_only.p_at_1 > 0.2'.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config change, e.g. --set dim=256 --set train.max_steps=500.")
@click.option("--agent", "agent_name", type=click.Choice(AGENT_CHOICES), default=None,
              help="Who plans and writes the reasoning (default: minimind.yaml agent.backend).")
@click.option("--lang", type=click.Choice(["en", "zh"]), default=None, help="Record language (default: minimind.yaml).")
@click.option("--no-launch", is_flag=True, help="Render everything but do not start training (state: drafted).")
@click.option("--force", is_flag=True, help="Launch even if a preflight check fails (the record keeps it).")
@click.option("--reason", default=None, help="Why --force is right here (kept in the record).")
@click.option("--yes", is_flag=True, help="Accept a compute increase beyond preflight.compute_factor × the base.")
@click.option("--stage", type=click.Choice(["pretrain", "sft"]), default="pretrain", show_default=True,
              help="sft: train on data.sft's conversations, starting from --base's best checkpoint.")
@click.option("--from-proposal", "from_proposal", default=None, metavar="VERSION",
              help="Start from VERSION's proposed next experiment (runs/VERSION/next.json); your flags win.")
@click.option("--patch", default=None, metavar="FILE",
              help="A code change to models/model.py (a unified diff), validated by the code gate and shown for approval.")
@click.option("--approve-code", "approve_code", default=None, metavar="SHA",
              help="Approve the code change whose sha256 starts with SHA (at least 8 hex digits); --yes never does.")
@click.option("--reject-code", "reject_code", default=None, metavar="NOTE",
              help="Reject the agent's code change waiting for approval: NOTE goes back to the agent as one more "
                   "round, and the revision waits for approval again (claude backend).")
@click.option("--seeds", type=int, default=None, metavar="N",
              help="Train N replicates differing only in their seed (default: minimind.yaml replicates.seeds, 1).")
def new(version: str, goal: str | None, hypothesis: str | None, base: str | None, expect: str | None,
        sets: tuple[str, ...], agent_name: str | None, lang: str | None, no_launch: bool, force: bool,
        reason: str | None, yes: bool, stage: str, from_proposal: str | None, patch: str | None,
        approve_code: str | None, reject_code: str | None, seeds: int | None) -> None:
    """Plan, check, estimate, render, snapshot and launch experiment VERSION (X.Y.Z).

    Before anything is written the model is built at a tiny size and the lab's lessons run
    as checks (see `minimind check`); a failed check refuses with exit 3 unless --force.

    \b
    Example:
      minimind new 1.4.8 --goal "freeze 40% of the bank" \\
          --hypothesis "inference loss improves over 1.4.7" --set freeze_ratio=0.4
      minimind new 1.5.0 --stage sft --base 1.4.8 --goal "teach 1.4.8 to answer" \\
          --hypothesis "SFT raises chat QA" --expect "chat_qa.taught.accuracy > base"
      minimind new 1.4.9 --goal "gate the memory read" --hypothesis "a learnable gate helps" \\
          --patch gate.diff --set memory_gate=true --approve-code 3f2a9c01
      minimind new 1.4.9 --goal "gate the memory read" --hypothesis "a learnable gate helps" \\
          --agent claude --reject-code "gate each memory layer separately"
    """
    from minimind.versions import parse

    parse(version)  # refuse a malformed version before anything else, even the lab lookup
    if from_proposal is None and (goal is None or hypothesis is None):
        raise click.UsageError("--goal and --hypothesis are required (or start from --from-proposal VERSION)")
    from lifecycle.new import NewRequest, create_experiment

    request = NewRequest(version=version, goal=goal, hypothesis=hypothesis, base=base, expect=expect,
                         sets=list(sets), agent=agent_name, lang=lang, launch=not no_launch,
                         force=force, reason=reason, yes=yes, stage=stage, from_proposal=from_proposal,
                         patch=patch, approve_code=approve_code, reject_code=reject_code,
                         confirm_code=_confirm_code if _interactive() else None, seeds=seeds)
    result = create_experiment(_lab(), request)
    for line in result.messages:
        click.echo(line)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _confirm_code(lines: list[str]) -> bool:
    for line in lines:
        click.echo(line)
    return click.confirm("Approve this code change? It becomes models/model.py and the experiment runs it", default=False)


@main.command("undo-code")
@click.argument("version")
def undo_code(version: str) -> None:
    """Reverse VERSION's code change in the living models/model.py (its snapshot keeps the code it ran).

    Refuses, saying why, when models/model.py has since changed where the reverse patch applies.

    \b
    Example:
      minimind undo-code 1.4.9
    """
    from lifecycle.code.codechange import undo

    click.echo(undo(_lab(), version))


@main.command()
@click.argument("version", required=False)
@click.option("--force", is_flag=True, help="Report failed checks but exit 0.")
def check(version: str | None, force: bool) -> None:
    """Run the preflight checks (the lab's lessons) on models/model.py or VERSION's snapshot.

    \b
    Example:
      minimind check
      minimind check 1.4.8
    """
    from lifecycle.check import check_command

    for line in check_command(_lab(), version, force):
        click.echo(line)


@main.command()
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(version: str | None, as_json: bool) -> None:
    """All experiments as a table, or one in detail.

    \b
    Example:
      minimind status
      minimind status 1.4.8 --json
    """
    from lifecycle.status import show_status

    show_status(_lab(), version, as_json)


@main.command()
@click.argument("version")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("-n", "--lines", default=0, type=int, help="Only the last N lines.")
def log(version: str, follow: bool, lines: int) -> None:
    """Print the run's train.log.

    VERSION@SEED prints one replicate's log; VERSION of a replicated experiment prints each under a header.

    \b
    Example:
      minimind log 1.4.8 -f
      minimind log 1.4.8@43 -n 20
    """
    from lifecycle.log import show_log

    show_log(_lab(), version, follow, lines)


@main.command()
@click.argument("version")
@click.option("--timeout", default=60, show_default=True, type=int, help="Seconds to wait for the checkpoint.")
def stop(version: str, timeout: int) -> None:
    """Stop a run gracefully: it finishes its step, checkpoints and exits.

    VERSION stops every replicate of a replicated experiment; VERSION@SEED only that one.

    \b
    Example:
      minimind stop 1.4.8
      minimind stop 1.4.8@43
    """
    from lifecycle.stop import stop_run

    click.echo(stop_run(_lab(), version, timeout))


@main.command()
@click.argument("version")
@click.option("--force", is_flag=True, help="Resume even a run a guardrail stopped.")
def resume(version: str, force: bool) -> None:
    """Continue a stopped, lost or failed run from its last checkpoint.

    VERSION resumes every replicate that is not done (a lost one alone); VERSION@SEED only that one.

    \b
    Example:
      minimind resume 1.4.8
      minimind resume 1.4.8@43
    """
    from lifecycle.resume import resume_run

    click.echo(resume_run(_lab(), version, force))


@main.command()
@click.argument("version")
@click.option("--seeds", type=int, required=True, metavar="N", help="Replicates the experiment has in all afterwards.")
@click.option("--yes", is_flag=True, help="Accept more added runs than preflight.compute_factor.")
def replicate(version: str, seeds: int, yes: bool) -> None:
    """Add replicates to a finished experiment (usually the base), with its own snapshot and config.

    The new runs differ from it only in their training seed. When they end, the experiment's
    record and verdict are redone over every replicate, and the lab's measured noise floor
    (the seed-to-seed spread per metric) includes them.

    \b
    Example:
      minimind replicate 1.4.7 --seeds 3
    """
    from lifecycle.replicate import add

    click.echo(add(_lab(), version, seeds, yes))


@main.command()
@click.argument("version")
def discard(version: str) -> None:
    """Remove a drafted experiment that never ran: its run folder, record and snapshot.

    Refused for anything that was launched, trained or committed. A code change waiting for
    approval (runs/.pending/VERSION) is removed the same way.

    \b
    Example:
      minimind discard 1.4.9
    """
    from lifecycle.discard import discard_experiment

    click.echo(discard_experiment(_lab(), version))


@main.command("eval")
@click.argument("version", required=False)
# Every option also takes the lab guide's spelling (eval_model.py's underscores).
@click.option("--num-samples", "--num_samples", "num_samples", type=int, default=None, help="Held-out samples to evaluate.")
@click.option("--model-path", "--model_path", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluate this checkpoint (or raw state dict) instead of an experiment's.")
@click.option("--model-type", "--model_type", "model_type", default=None,
              help="model, model_original, model_memory, model_no_feed or a snapshot like model_1_4_8.")
@click.option("--dim", type=int, default=None, help="Model width of a raw state dict (default: from the weights).")
@click.option("--n-layers", "--n_layers", "n_layers", type=int, default=None, help="Layers of a raw state dict.")
@click.option("--n-heads", "--n_heads", "n_heads", type=int, default=None, help="Attention heads of a raw state dict.")
@click.option("--n-kv-heads", "--n_kv_heads", "n_kv_heads", type=int, default=None,
              help="Key/value heads of a raw state dict (default: from the weights).")
@click.option("--max-seq-len", "--max_seq_len", "max_seq_len", type=int, default=None,
              help="Longest sequence of a raw state dict.")
@click.option("--knowledge-num", "--knowledge_num", "knowledge_num", type=int, default=None,
              help="Memory entries of a raw state dict.")
@click.option("--knowledge-length", "--knowledge_length", "knowledge_length", type=int, default=None,
              help="Tokens per entry of a raw state dict.")
@click.option("--knowledge-dim", "--knowledge_dim", "knowledge_dim", type=int, default=None,
              help="Key width of a raw state dict.")
@click.option("--use-moe", "--use_moe", "use_moe", is_flag=True, help="The raw state dict is MoE (also inferred from its keys).")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="tokenizer.json to use (default: the lab's; given here, a mismatch with the checkpoint only warns).")
@click.option("--pretrain", "--data", "pretrain", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Pretraining JSONL for the held-out losses (default: the lab's).")
@click.option("--probes", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="probes.json for factual recall (default: the lab's).")
def eval_cmd(version: str | None, num_samples: int | None, model_path: Path | None, model_type: str | None,
             use_moe: bool, tokenizer: Path | None, pretrain: Path | None, probes: Path | None,
             **sizes: int | None) -> None:
    """Evaluate an experiment's checkpoint (or any checkpoint) and write eval.json.

    A replicated experiment evaluates every replicate (VERSION@SEED: one) and is analysed once.

    \b
    Example:
      minimind eval 1.4.8 --num-samples 10
      minimind eval 1.4.8@43
      minimind eval --model_path out/pretrain_512.pth --model_type model_original --num_samples 5
    """
    from lifecycle.eval import evaluate

    files = {"tokenizer": tokenizer, "pretrain": pretrain, "probes": probes}
    click.echo(evaluate(_lab(), version, num_samples, model_path, model_type,
                        {k: v for k, v in sizes.items() if v is not None}, use_moe=use_moe,
                        files={k: v for k, v in files.items() if v is not None}))


@main.command()
@click.argument("src", metavar="IN", type=click.Path(exists=True, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--n-heads", "--n_heads", "n_heads", type=int, default=None,
              help="Query heads, for a raw state dict (a checkpoint or config.json records them).")
@click.option("--n-kv-heads", "--n_kv_heads", "n_kv_heads", type=int, default=None,
              help="Key/value heads (default: from the weights' shapes).")
@click.option("--raw", is_flag=True, help="Upstream -> lab: write a plain state dict, as MiniMind2's .pth files.")
def convert(src: Path, out: Path, n_heads: int | None, n_kv_heads: int | None, raw: bool) -> None:
    """Convert weights between the lab format and current upstream MiniMind's.

    IN is a .pth (checkpoint or state dict) or a Hugging Face-style folder
    (model.safetensors or pytorch_model.bin, plus config.json); OUT gets the other format.

    \b
    Example:
      minimind convert runs/1.4.8/checkpoints/pretrain_512.pth out/minimind2-hf
      minimind convert out/MiniMind2 out/minimind2_lab.pth
    """
    from models.convert import convert as run_convert

    click.echo(run_convert(src, out, n_heads, n_kv_heads, raw))


@main.command()
@click.argument("version")
@click.option("--agent", type=click.Choice(AGENT_CHOICES), default=None,
              help="Who writes the prose (default: the backend the experiment asked for).")
def analyse(version: str, agent: str | None) -> None:
    """Redo only the analysis, the record and the commit draft from the existing eval.json.

    \b
    Example:
      minimind analyse 1.4.8 --agent offline
    """
    from lifecycle.running.analyse import analyse_experiment

    click.echo(analyse_experiment(_lab(), version, agent))


@main.command()
@click.argument("version")
@click.option("--approve", is_flag=True, help="Record approval (refused while a required section is missing).")
@click.option("--edit", is_flag=True, help="Open the record in $EDITOR first.")
@click.option("--accept-lesson", "accept_lesson", is_flag=True,
              help="With --approve: also add the lesson this experiment proposed to experiment/LESSONS.md.")
@click.option("--reject-lesson", "reject_lesson", is_flag=True, help="Drop the lesson this experiment proposed.")
def review(version: str, approve: bool, edit: bool, accept_lesson: bool, reject_lesson: bool) -> None:
    """Show the record, check it against the lab's quality standard, approve it.

    Approving never accepts the proposed lesson: --accept-lesson does (or the prompt, at a terminal).

    \b
    Example:
      minimind review 1.4.8 --approve
      minimind review 1.4.8 --approve --accept-lesson
    """
    from lifecycle.review import review_experiment

    review_experiment(_lab(), version, approve, edit, reject_lesson=reject_lesson, accept_lesson=accept_lesson)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def history(as_json: bool) -> None:
    """The lab notebook: every experiment with its change, verdict, key metrics and next step.

    \b
    Example:
      minimind history
      minimind history --json
    """
    from lifecycle.history import show_history

    show_history(_lab(), as_json)


@main.command()
@click.argument("version")
@click.option("--yes", is_flag=True, help="Commit even if the record is not approved.")
def commit(version: str, yes: bool) -> None:
    """Commit exactly this experiment's files with the drafted message.

    \b
    Example:
      minimind commit 1.4.8
    """
    from lifecycle.commit import commit_experiment

    click.echo(commit_experiment(_lab(), version, yes))


@main.command()
@click.argument("versions", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the loss-curve PNG (default: runs/compare_<versions>.png).")
def compare(versions: tuple[str, ...], plot: Path | None) -> None:
    """Config differences, metrics side by side (base -> new), loss curves.

    \b
    Example:
      minimind compare 1.4.7 1.4.8 --plot /tmp/loss.png
    """
    from lifecycle.compare import compare_experiments

    compare_experiments(_lab(), list(versions), plot)


@main.group()
def memory() -> None:
    """Look inside the memory bank."""


@memory.command("show")
@click.argument("version")
@click.option("--text", required=True, help="Text whose tokens' memory reads to show.")
@click.option("--top", default=3, show_default=True, type=int, help="Entries per token and layer.")
def memory_show(version: str, text: str, top: int) -> None:
    """Which memory entries each token reads, decoded to text, with weights.

    \b
    Example:
      minimind memory show 1.4.8 --text "The capital of France is"
    """
    from lifecycle.memory import show_memory

    show_memory(_lab(), version, text, top)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", default=None, type=int, help="Training steps per pretraining experiment (default: sized for a few minutes).")
@click.option("--sft-steps", default=None, type=int, help="Training steps per SFT experiment (default: half of --steps).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config change for every experiment, e.g. --set dim=256 (the SFT experiments take their base's model).")
@click.option("--sft-set", "sft_sets", multiple=True, metavar="KEY=VALUE",
              help="Config change for the SFT experiments only, e.g. --sft-set epochs=20.")
@click.option("--yes", is_flag=True, help="As on new: accept sizes whose compute grows past preflight.compute_factor × the base.")
def demo(directory: Path | None, steps: int | None, sft_steps: int | None, sets: tuple[str, ...],
         sft_sets: tuple[str, ...], yes: bool) -> None:
    """The whole loop on the bundled data in a fresh lab, on CPU, in minutes.

    \b
    Example:
      minimind demo /tmp/minimind-demo
      minimind demo /tmp/longer-sft --sft-steps 4000 --sft-set epochs=20 --yes
    """
    from lifecycle.demo import run_demo

    run_demo(directory, steps, sft_steps, sets, sft_sets, yes)


if __name__ == "__main__":
    sys.exit(main())
