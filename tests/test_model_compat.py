"""Old snapshots and checkpoints keep loading into models/model.py and giving the same numbers.

The fixture is a lab made by minimind at dc717c6 (tests/fixtures/README.md): its model
snapshots are byte copies of that version's models/model.py, its checkpoints that
version's training output.
"""

import importlib.util
import itertools
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_helpers import one_thread  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "lab_dc717c6.tar.xz"
CHECKPOINTS = {  # checkpoint -> the snapshot that trained it
    "runs/0.1.0/checkpoints/pretrain_16.pth": "models/model_0_1_0.py",
    "runs/0.1.1/checkpoints/last.pth": "models/model_0_1_1.py",
}
_unique = itertools.count()


@pytest.fixture(scope="module")
def legacy_lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lab_dc717c6")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(root, filter="data")
    return root / "legacy"


def load_model_file(path: Path):
    """The module of one model file, as the lab loads a snapshot: by path, under a name of its own."""
    name = f"compat_model_{next(_unique)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def new_module():
    return load_model_file(ROOT / "models" / "model.py")


def load_checkpoint(lab: Path, checkpoint: str) -> dict:
    return torch.load(lab / checkpoint, map_location="cpu", weights_only=True)


def build(module, checkpoint: dict):
    model = module.MiniMindLM(module.ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.eval()


def fixed_input(vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))


def test_recorded_config_with_the_retired_scoring_func_loads(legacy_lab, new_module):
    recorded = load_checkpoint(legacy_lab, "runs/0.1.0/checkpoints/pretrain_16.pth")["model_config"]
    assert recorded["scoring_func"] == "softmax"  # what that version wrote
    config = new_module.ModelConfig.from_dict(recorded)
    assert config.to_dict() == {k: v for k, v in recorded.items() if k != "scoring_func"}


@pytest.mark.parametrize("checkpoint_path, snapshot", CHECKPOINTS.items())
def test_old_checkpoint_gives_the_old_snapshots_logits(legacy_lab, new_module, checkpoint_path, snapshot):
    checkpoint = load_checkpoint(legacy_lab, checkpoint_path)
    assert checkpoint["module"] == Path(snapshot).stem
    old, new = build(load_model_file(legacy_lab / snapshot), checkpoint), build(new_module, checkpoint)
    assert list(new.state_dict()) == list(old.state_dict())
    ids = fixed_input(new.config.vocab_size)
    with torch.no_grad():
        old_logits, new_logits = old(ids).logits, new(ids).logits
    assert torch.equal(new_logits, old_logits)
    prompt = ids[:1, :6]
    assert torch.equal(new.generate(prompt, 16, eos_token_id=None), old.generate(prompt, 16, eos_token_id=None))


def test_cached_token_by_token_decoding_equals_the_full_forward(legacy_lab, new_module):
    model = build(new_module, load_checkpoint(legacy_lab, "runs/0.1.0/checkpoints/pretrain_16.pth"))
    ids = fixed_input(model.config.vocab_size)
    steps, past = [], None
    with torch.no_grad():
        full = model(ids).logits
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    prompt = ids[:1, :6]
    assert torch.equal(model.generate(prompt, 16, eos_token_id=None, use_cache=True),
                       model.generate(prompt, 16, eos_token_id=None, use_cache=False))


def test_resumed_training_step_matches_the_old_snapshot(legacy_lab, new_module):
    """A stopped run's checkpoint (EMA query sums pending) takes the same next step under both files."""
    checkpoint = load_checkpoint(legacy_lab, "runs/0.1.1/checkpoints/last.pth")
    models = [build(load_model_file(legacy_lab / "models/model_0_1_1.py"), checkpoint), build(new_module, checkpoint)]
    ids = fixed_input(models[0].config.vocab_size)
    results = []
    for model in models:
        for (_, layer), pending in zip(model.memory_layers(), checkpoint["memory_pending"]):
            layer.pending = list(pending)
        model.train()
        out = model(ids)
        loss = F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.aux_loss
        loss.backward()
        report = model.after_optimizer_step(model.config.ema_update_freq)
        results.append((loss.detach(), [p.grad for p in model.parameters()], report, model.memory_bank.clone()))
    (old_loss, old_grads, old_report, old_bank), (new_loss, new_grads, new_report, new_bank) = results
    assert torch.equal(new_loss, old_loss) and new_report == old_report and new_report["updated"] > 0
    assert all(torch.equal(a, b) for a, b in zip(new_grads, old_grads))
    assert torch.equal(new_bank, old_bank)
