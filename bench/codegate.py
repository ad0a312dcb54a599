"""Time the code gate's validation of one candidate on the CPU: the static stages in this
process, and the isolated child (import, the lab's checks, the effect check, the smoke).

    python bench/codegate.py [--json] [--runs 3]

The candidate is a learnable gate on the memory output (the tests' happy path). Targets
(issue 21): the whole validation under 20 s on a 2-core machine, the static stages under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GATE = [
    ('    similarity_loss_weight: float = _setting(',
     '    memory_gate: bool = _setting(False, "scale the memory output by a learnable gate")\n'
     '    similarity_loss_weight: float = _setting('),
    ('        self.memory = MemoryLayer(config) if spec.memory else None\n',
     '        self.memory = MemoryLayer(config) if spec.memory else None\n'
     '        self.memory_gate = nn.Parameter(torch.zeros(())) if spec.memory and config.memory_gate else None\n'),
    ('            memory, memory_aux = self.memory(h_attn, bank, embedding_weight, real)\n',
     '            memory, memory_aux = self.memory(h_attn, bank, embedding_weight, real)\n'
     '            if self.memory_gate is not None:\n'
     '                memory = memory * torch.sigmoid(self.memory_gate)\n'),
]
CHANGE = {"summary": "a learnable gate on the memory output", "touches": ["Block.__init__", "Block.forward"],
          "new_settings": [{"name": "memory_gate", "type": "bool", "default": False, "meaning": "gate"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lifecycle.code import codegate
    from models.model import ModelConfig

    base = (ROOT / "models" / "model.py").read_text(encoding="utf-8")
    candidate = base
    for old, new in GATE:
        candidate = candidate.replace(old, new)
    change = codegate.CodeChange.from_dict(CHANGE)
    base_model = ModelConfig(knowledge_num=1024).to_dict()
    static, child, total = [], [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        report = codegate.validate(base, candidate, change=change, reasons=[(1, 10**6, "bench")], base_model=base_model,
                                   model_sets={"memory_gate": True})
        total.append(time.perf_counter() - start)
        assert report.ok, report.refusal()
        static.append(report.seconds["static"])
        child.append(report.seconds["child"])
    out = {"static_s": round(statistics.median(static), 3), "child_s": round(statistics.median(child), 3),
           "total_s": round(statistics.median(total), 3), "runs": args.runs, "cpus": os.cpu_count(),
           "isolation": report.isolation["network"], "processes": report.isolation["processes"],
           "targets": {"total_s": 20.0, "static_s": 1.0}}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"code gate, one candidate ({args.runs} runs, median; {out['cpus']} CPUs): static stages "
              f"{out['static_s']:.2f} s (target < 1 s), child {out['child_s']:.2f} s, total {out['total_s']:.2f} s "
              f"(target < 20 s); isolation: {out['isolation']}; {out['processes']}")


if __name__ == "__main__":
    main()
