"""GPU defaults resolved from device facts, tested on CPU by passing the facts in:
precision `auto` (bf16 on a CUDA GPU with bf16, else fp32), an explicit value kept, the
device the trainer and the evaluator compute on, and eval under the run's autocast."""

from __future__ import annotations

import pytest
import torch

from minimind.config import from_dict
from training import runtime


def _cfg(**launch):
    return from_dict({"version": "0.1.0", "model_module": "model", "model": {}, "launch": launch})


@pytest.mark.parametrize("requested,cuda,bf16,cpu,expected", [
    ("auto", True, True, False, "bf16"),
    ("auto", True, False, False, "no"),     # a pre-Ampere card: no bf16, fp32
    ("auto", False, False, False, "no"),
    ("auto", True, True, True, "no"),       # launch.cpu forces the CPU: fp32
    ("no", True, True, False, "no"),        # an older lab's explicit 'no' is kept
    ("fp16", True, True, False, "fp16"),
    ("bf16", False, False, False, "bf16"),
])
def test_precision_resolution(requested, cuda, bf16, cpu, expected):
    assert runtime.resolve_precision(requested, cuda=cuda, bf16_supported=bf16, cpu=cpu) == expected


def test_new_labs_default_to_auto_and_old_configs_keep_no():
    assert _cfg().launch.mixed_precision == "auto"
    old = _cfg(mixed_precision="no")
    assert runtime.run_precision(old, {"cuda": True, "bf16_supported": True}) == "no"
    assert runtime.run_precision(_cfg(), {"cuda": True, "bf16_supported": True}) == "bf16"
    with pytest.raises(Exception, match="mixed_precision"):
        _cfg(mixed_precision="fp8")


def test_run_device_follows_local_rank_and_launch_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert runtime.run_device(_cfg(), cuda=True) == torch.device("cuda", 3)
    assert runtime.run_device(_cfg(cpu=True), cuda=True) == torch.device("cpu")
    assert runtime.run_device(_cfg(), cuda=False) == torch.device("cpu")
    assert runtime.run_device(_cfg()) == (torch.device("cuda", 3) if torch.cuda.is_available() else torch.device("cpu"))


def test_autocast_for_the_run_precision():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with runtime.autocast_for(torch.device("cpu"), "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with runtime.autocast_for(torch.device("cpu"), "no"):
        assert (x @ w).dtype == torch.float32
    with runtime.autocast_for(torch.device("cpu"), "fp16"):  # fp16 autocast is a GPU thing: fp32 on CPU
        assert (x @ w).dtype == torch.float32
    runtime.enable_tf32(torch.device("cpu"))  # a no-op off CUDA (must not raise)
