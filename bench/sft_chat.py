"""SFT chat QA of the memory and original presets at equal width, on the bundled data (CPU).

Runs `minimind demo` (two pretraining experiments, an SFT of each, at the demo's width) in a
lab folder, then reads the four eval.json files and prints one JSON: chat QA accuracy per
group with its bootstrap interval, the SFT loss, and paired intervals for

  - each SFT model against its own pretrain base (does SFT teach the taught facts?), and
  - the memory SFT model against the original one (the lab's open question).

The numbers in docs/RESULTS.md's SFT section come from this command (pretraining is capped at
the demo's 4 epochs, 228 steps of the small corpus, whatever --steps says above that; SFT's
epochs=20 lifts that cap for the 4,000 steps; the same 200 chat probes per split for all four):

    python bench/sft_chat.py --steps 240 --sft-steps 4000 --set eval.chat_probes=200 \
        --sft-set epochs=20 [--lab /tmp/sft-bench]

It took 35 minutes on an idle 2-core CPU; `--steps 20 --sft-steps 20` runs the same path in a
few minutes (the numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minimind.verdict import CHAT_QA_GROUPS, paired_interval, value_interval  # noqa: E402

# comparison -> (new, base): the demo's versions (0.1.0 original, 0.1.1 memory, 0.1.2 SFT of 0.1.1, 0.1.3 SFT of 0.1.0).
PAIRS = {"sft_vs_pretrain.memory": ("0.1.2", "0.1.1"), "sft_vs_pretrain.original": ("0.1.3", "0.1.0"),
         "memory_vs_original.sft": ("0.1.2", "0.1.3"), "memory_vs_original.pretrain": ("0.1.1", "0.1.0")}


def _interval(ci):
    return None if ci is None else {k: ci[k] for k in ("low", "high", "n", "confidence") if k in ci} | (
        {"delta": ci["delta"]} if "delta" in ci else {})


def by_relation(ev: dict, group: str) -> dict:
    """{relation: {accuracy, n}} of one chat QA group, from eval.json's per-probe hits (ids are relation:hash)."""
    block = ((ev.get("per_item") or {}).get("chat_qa") or {}).get(group) or {}
    hits: dict[str, list[float]] = {}
    for key, hit in zip(block.get("keys", []), block.get("hit", [])):
        hits.setdefault(key.split(":", 1)[0], []).append(hit)
    return {r: {"accuracy": round(sum(h) / len(h), 3), "n": len(h)} for r, h in sorted(hits.items())}


def summarise(lab: Path) -> dict:
    import yaml

    runs: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    for version in ("0.1.0", "0.1.1", "0.1.2", "0.1.3"):
        run = lab / "runs" / version
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        ev = json.loads((run / "eval.json").read_text())
        evals[version] = ev
        runs[version] = {
            "preset": cfg["model"]["preset"], "stage": cfg.get("stage", "pretrain"), "dim": cfg["model"]["dim"],
            "steps": cfg["train"]["max_steps"], "base": (cfg.get("init") or {}).get("version"),
            "sft_loss": ev.get("sft_loss"), "inference_loss": ev.get("inference_loss"),
            "chat_qa": {g: {"accuracy": q["accuracy"], "n": q["n"],
                            "interval": _interval(value_interval(ev, f"chat_qa.{g}.accuracy"))}
                        for g, q in (ev.get("chat_qa") or {}).items()},
            "chat_qa_by_relation": {g: by_relation(ev, g) for g in ("taught", "held_out")},
            "chat": ev.get("chat"),
        }
    pairs = {}
    for name, (new, base) in PAIRS.items():
        pairs[name] = {"new": new, "base": base,
                       **{g: _interval(paired_interval(evals[new], evals[base], f"chat_qa.{g}.accuracy"))
                          for g in CHAT_QA_GROUPS}}
    return {"runs": runs, "pairs": pairs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=240, help="pretraining steps per experiment")
    ap.add_argument("--sft-steps", type=int, default=4000, help="SFT steps per experiment")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="minimind demo --set: for every experiment, e.g. dim=256 or eval.chat_probes=200")
    ap.add_argument("--sft-set", dest="sft_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="minimind demo --sft-set: for the SFT experiments only, e.g. epochs=20")
    ap.add_argument("--lab", type=Path, default=None, help="lab folder (default: a new temporary one)")
    ap.add_argument("--summarise-only", action="store_true", help="read an existing --lab, run nothing")
    args = ap.parse_args(argv)
    lab = args.lab or Path(tempfile.mkdtemp(prefix="minimind-sft-bench-")) / "lab"
    started = time.time()
    if not args.summarise_only:
        # The demo's own command, so the bench measures exactly what `make demo` runs.
        out = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "demo", str(lab),
                              "--steps", str(args.steps), "--sft-steps", str(args.sft_steps),
                              *(f"--set={x}" for x in args.sets), *(f"--sft-set={x}" for x in args.sft_sets),
                              # the sizes are this command's: long SFT is what it is for (new's compute gate)
                              "--yes"],
                             cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
        if out.returncode != 0:
            print(json.dumps({"error": f"minimind demo exited {out.returncode}", "lab": str(lab)}))
            return 1
    # what was asked, when this call ran the demo (a --summarise-only read has the runs' own steps)
    asked = {} if args.summarise_only else {"steps": args.steps, "sft_steps": args.sft_steps, "sets": args.sets,
                                            "sft_sets": args.sft_sets, "wall_s": round(time.time() - started, 1)}
    result = {"lab": str(lab), **asked, **summarise(lab)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
