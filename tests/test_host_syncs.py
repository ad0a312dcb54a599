"""Host syncs in the trainer's step: numbers stay on the device until a log step.

Every read of a tensor's value by the host (`item`, `int`, `float`, `bool`, `tolist`) and
every op whose output shape depends on the data (`nonzero`, `unique`, boolean-mask
indexing, `masked_select`) makes a GPU wait for its queue to drain. They are counted here
on the CPU, where the same calls happen, over a trainer's non-log step and its EMA step.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import helpers_train as h

# aten ops that read a value back (item/int/float/bool all reach _local_scalar_dense) or
# size their output by the data
READ_BACK = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select"}


class HostSyncs(TorchDispatchMode):
    """Counts host syncs by where they come from (the innermost frame outside torch).

    The optimizer's own `.item()` on its step counters is left out: those counters live on
    the host even when the parameters are on a GPU (AdamW without capturable/fused), so
    on a GPU they wait for nothing."""

    def __init__(self):
        super().__init__()
        self.sites: collections.Counter = collections.Counter()

    def _note(self, what: str) -> None:
        stack = traceback.extract_stack()[:-2]
        if any("/torch/optim/" in f.filename for f in stack):
            return
        ours = [f for f in stack if "/torch/" not in f.filename and "test_host_syncs" not in f.filename]
        self.sites[f"{what} at {ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno}" if ours else what] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READ_BACK or (name == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)):
            self._note(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist  # not an aten op: patched
        mode = self

        def tolist(tensor):
            mode._note("tolist")
            return mode._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


@pytest.fixture
def trainer(tmp_path, bundled_data, monkeypatch):
    from training.loop import Trainer
    from training.signals import StopFlag

    monkeypatch.setattr(StopFlag, "install", lambda self: None)  # pytest keeps its own signal handlers
    lab = h.make_lab(tmp_path / "lab", bundled_data)
    run_dir = h.write_config(lab, model={"ema_update_freq": 2, "ema_decay": 0.0},
                             train={"accumulation_steps": 2, "log_interval": 100, "eval_interval": 0, "max_steps": 8})
    trainer = Trainer(run_dir)
    trainer.setup()
    return trainer


def test_a_step_reads_nothing_back_and_an_ema_step_two_numbers(trainer):
    torch.set_num_threads(1)
    trainer.train_step()  # step 1: warm-up (first calls, lazy state)
    with HostSyncs() as ema:
        stats = trainer.train_step()  # step 2: optimizer step and EMA update, no log
    with HostSyncs() as plain:
        trainer.train_step()  # step 3: optimizer step only
    assert trainer.unwrapped.last_ema_updated > 0  # the EMA step did update entries
    # before: 2 per micro-batch-pair step (token counts), 8 in a tiny EMA step (3 unique,
    # 2 boolean masks, one count per layer and one per 1,024 updated entries)
    assert plain.total == 0, dict(plain.sites)
    assert ema.total <= 2, dict(ema.sites)  # entries held per layer (one read), entries to update
    assert torch.is_tensor(stats["tokens"]) and int(stats["tokens"]) > 0  # counted on the device
