"""Candidate edits of models/model.py for the code-gate tests: each a list of (old, new)
replacements of exact text, so a test can apply them to a file or script them as the
editor tool's str_replace calls."""

from __future__ import annotations

from pathlib import Path

MODEL = Path(__file__).resolve().parent.parent / "models" / "model.py"

# A learnable gate on the memory output; memory_gate=False (the default) is the base's forward.
GATE = [
    ('    similarity_loss_weight: float = _setting(',
     '    memory_gate: bool = _setting(False, "scale the memory output by a learnable gate (sigmoid of a scalar)")\n'
     '    similarity_loss_weight: float = _setting('),
    ('        self.memory = MemoryLayer(config) if spec.memory else None\n',
     '        self.memory = MemoryLayer(config) if spec.memory else None\n'
     '        self.memory_gate = nn.Parameter(torch.zeros(())) if spec.memory and config.memory_gate else None\n'),
    ('            memory, memory_aux = self.memory(h_attn, bank, embedding_weight, real)\n',
     '            memory, memory_aux = self.memory(h_attn, bank, embedding_weight, real)\n'
     '            if self.memory_gate is not None:\n'
     '                memory = memory * torch.sigmoid(self.memory_gate)\n'),
]
GATE_SETTING = {"name": "memory_gate", "type": "bool", "default": False,
                "meaning": "scale the memory output by a learnable gate"}
GATE_CHANGE = {"summary": "a learnable gate on the memory output", "touches": ["Block.__init__", "Block.forward"],
               "new_settings": [GATE_SETTING], "changes_default": False}

# Attention that lets every position see the next token (the mask shifted by one).
LEAK = [
    ('mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)',
     'mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T + 1)'),
    ('            is_causal = T == S and T > 1  #', '            is_causal = False  #'),
]

# A new setting that is read nowhere: the plan's settings change nothing.
NO_EFFECT = [GATE[0]]

# The memory output halved whatever the settings: the default path changes.
HALVED = [('            h, aux = h + memory, aux + memory_aux\n', '            h, aux = h + 0.5 * memory, aux + memory_aux\n')]


def apply(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def base() -> str:
    return MODEL.read_text(encoding="utf-8")


def in_forward(code: str) -> list[tuple[str, str]]:
    """An edit that runs `code` (indented lines) at the start of MiniMindLM.forward."""
    old = '        B, T = input_ids.shape\n        start = past_key_values[0][0].shape[1] if past_key_values else 0\n'
    body = "".join(f"        {line}\n" for line in code.splitlines())
    return [(old, body + old)]


def at_top(code: str) -> list[tuple[str, str]]:
    """An edit that puts `code` right after the imports (module level)."""
    old = "import torch.nn.functional as F\n"
    return [(old, old + code.rstrip("\n") + "\n")]
