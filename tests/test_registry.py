"""models/registry.py: snapshots, loading modules by name, presets, checkpoints (atomic, strict, clear errors)."""

import io
import shutil
from pathlib import Path

import pytest
import torch

from minimind.errors import GateRefused, MinimindError, UsageError
from models import registry

REAL_MODELS = Path(registry.__file__).resolve().parent
TINY = dict(preset="memory", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=64,
            knowledge_num=256, knowledge_length=8, knowledge_dim=32, num_candidates=8)


@pytest.fixture
def lab_models(tmp_path) -> Path:
    """A copy of models/model.py in a temporary lab: tests edit the copy, never the real file."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REAL_MODELS / "model.py", models / "model.py")
    return models


def payload(model, module="model", **extra) -> dict:
    """What a writer gives save_checkpoint: module, config and weights, plus its own keys."""
    return {"module": module, "model_config": model.config.to_dict(), "model": model.state_dict(), **extra}


def test_module_names(lab_models):
    for bad in ("1.4", "1.4.8.1", "../1.4.8", "1.4.8; rm -rf x", "01.4.8", 148):
        with pytest.raises(UsageError):
            registry.snapshot(lab_models, bad)
    assert [p.name for p in lab_models.iterdir()] == ["model.py"]  # nothing written for a bad version
    for bad in ("../model", "model.py", "model_1_4", "os", "model_1_4_8/../../x"):
        with pytest.raises(MinimindError, match="model_X_Y_Z"):
            registry.load_module(REAL_MODELS, bad)


def test_presets_come_from_the_module(lab_models):
    module = registry.load_module(lab_models, "model")
    assert registry.preset_names(lab_models) == (*module.PRESETS, *module.PRESET_ALIASES)
    source = (lab_models / "model.py").read_text()
    assert source.count("\nPRESETS = {\n") == 1
    (lab_models / "model.py").write_text(source.replace(
        "\nPRESETS = {\n", '\nPRESETS = {\n    "wide": BlockSpec(feed_forward=True, memory=True),\n'))
    assert "wide" in registry.preset_names(lab_models)
    model = registry.build_model(lab_models, "model", {**TINY, "preset": "wide"})
    assert model.config.preset == "wide" and model.config.has_memory


def test_snapshot_is_an_exact_copy_and_never_rewritten(lab_models):
    path, sha = registry.snapshot(lab_models, "1.4.8")
    assert path == lab_models / "model_1_4_8.py"
    assert path.read_bytes() == (lab_models / "model.py").read_bytes()
    assert sha == registry.sha256_file(path)
    assert registry.snapshot(lab_models, "1.4.8") == (path, sha)  # same bytes: idempotent
    (lab_models / "model.py").write_text((lab_models / "model.py").read_text() + "\n# edited\n")
    with pytest.raises(GateRefused, match="differs"):
        registry.snapshot(lab_models, "1.4.8")
    assert path.read_bytes() != (lab_models / "model.py").read_bytes()


def test_snapshot_rebuilds_and_reproduces_after_model_py_is_edited(lab_models, tmp_path):
    registry.snapshot(lab_models, "1.0.0")
    torch.manual_seed(0)
    model = registry.build_model(lab_models, "model_1_0_0", TINY).eval()
    ids = torch.randint(1, 300, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits
    registry.save_checkpoint(tmp_path / "ckpt.pth", payload(model, "model_1_0_0", step=7))

    # the living file changes its computation (a research edit); the snapshot must not care
    source = (lab_models / "model.py").read_text()
    edited = source.replace("return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))",
                            "return self.dropout(self.w2(F.gelu(self.w1(x)) * self.w3(x)))")
    edited = edited.replace("h = x + h_attn\n", "h = x + 2 * h_attn\n")
    assert edited != source
    (lab_models / "model.py").write_text(edited)

    loaded, ckpt = registry.load_checkpoint(tmp_path / "ckpt.pth", lab_models)
    assert ckpt["module"] == "model_1_0_0" and ckpt["step"] == 7 and ckpt["model_config"]["preset"] == "memory"
    assert ckpt["format"] == registry.FORMAT == "minimind-checkpoint-1"
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, expected, rtol=0, atol=0)
    assert torch.equal(loaded.memory_bank, model.memory_bank)
    living = registry.build_model(lab_models, "model", TINY)
    living.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(living.eval()(ids).logits, expected)


def test_checkpoint_keeps_an_edited_memory_bank(lab_models, tmp_path):
    model = registry.build_model(lab_models, "model", TINY)
    model.set_memory_entry(5, [7, 8, 9])
    registry.save_checkpoint(tmp_path / "c.pth", payload(model, note="kept"))
    data = registry.read_checkpoint(tmp_path / "c.pth")
    loaded = registry.model_from_checkpoint(data, lab_models, tmp_path / "c.pth")
    assert loaded.memory_entry(5) == [7, 8, 9] and data["note"] == "kept"
    assert torch.equal(loaded.memory_frozen, model.memory_frozen)
    with pytest.raises(ValueError, match="needs model_config, model"):
        registry.save_checkpoint(tmp_path / "e.pth", {"module": "model"})
    with pytest.raises(ValueError, match="model_X_Y_Z"):
        registry.save_checkpoint(tmp_path / "e.pth", payload(model, "../model"))
    assert not (tmp_path / "e.pth").exists()


def test_a_failed_write_keeps_the_previous_checkpoint(lab_models, tmp_path, monkeypatch):
    model = registry.build_model(lab_models, "model", TINY)
    path = tmp_path / "c.pth"
    registry.save_checkpoint(path, payload(model, step=1))
    before = path.read_bytes()

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.save_checkpoint(path, payload(model, step=2))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.is_file()] == ["c.pth"]


@pytest.mark.parametrize("damage", ["half", "header", "empty", "garbage"])
def test_truncated_or_corrupted_checkpoint_is_a_one_line_error(lab_models, tmp_path, damage):
    model = registry.build_model(lab_models, "model", TINY)
    path = tmp_path / "c.pth"
    registry.save_checkpoint(path, payload(model, step=1))
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "header": data[:100], "empty": b"",
                      "garbage": b"not a checkpoint at all" * 10}[damage])
    with pytest.raises(MinimindError) as error:
        registry.read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and ("truncated or corrupted" in message)


def test_every_truncation_is_a_one_line_error(lab_models, tmp_path):
    """Wherever a copy or a crash cuts the file, the one reader names it in one line."""
    model = registry.build_model(lab_models, "model", {**TINY, "knowledge_num": 16, "num_candidates": 4})
    buffer = io.BytesIO()
    torch.save({**payload(model), "format": registry.FORMAT}, buffer)
    data = buffer.getvalue()
    path = tmp_path / "c.pth"
    for cut in sorted({*range(0, 4096, 97), *range(4096, len(data), max(1, len(data) // 60))}):
        path.write_bytes(data[:cut])
        with pytest.raises(MinimindError) as error:
            registry.read_checkpoint(path)
        message = str(error.value)
        assert "\n" not in message and str(path) in message and "truncated or corrupted" in message, cut


@pytest.mark.parametrize("hook", [Path("x"), "numpy"])
def test_checkpoint_with_code_objects_is_refused(lab_models, tmp_path, hook):
    import numpy as np

    path = tmp_path / "c.pth"
    torch.save({"module": "model", "model_config": TINY, "model": {},
                "hook": np.zeros(3) if hook == "numpy" else hook}, path)
    with pytest.raises(MinimindError, match="may hold only tensors and plain data") as error:
        registry.read_checkpoint(path)
    assert ("numpy" if hook == "numpy" else "pathlib") in str(error.value)


def test_wrong_files_are_one_line_errors(lab_models, tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(MinimindError, match="does not hold a dict"):
        registry.read_checkpoint(tmp_path / "list.pth")
    torch.save({"format": "minimind-checkpoint-9", "module": "model"}, tmp_path / "future.pth")
    with pytest.raises(MinimindError, match="has format minimind-checkpoint-9"):
        registry.read_checkpoint(tmp_path / "future.pth")


def test_missing_checkpoint_and_mismatched_config(lab_models, tmp_path):
    with pytest.raises(MinimindError, match="not found"):
        registry.read_checkpoint(tmp_path / "nope.pth")
    model = registry.build_model(lab_models, "model", TINY)
    registry.save_checkpoint(tmp_path / "c.pth", payload(model))
    data = registry.read_checkpoint(tmp_path / "c.pth")
    with pytest.raises(MinimindError, match="does not fit"):
        registry.model_from_checkpoint(data, lab_models, tmp_path / "c.pth", config={**TINY, "dim": 128})
    with pytest.raises(MinimindError, match="unknown model config key"):
        registry.build_model(lab_models, "model", {**TINY, "knowlege_num": 4})


def test_raw_minimind2_state_dict_loads_strictly(lab_models, tmp_path):
    cfg = {**TINY, "preset": "original"}
    reference = registry.build_model(lab_models, "model", cfg)
    raw = {f"_orig_mod.{k}": v.clone() for k, v in reference.state_dict().items()}  # as a compiled model saves it
    torch.save(raw, tmp_path / "pretrain_512.pth")
    with pytest.raises(MinimindError, match="give module_name and config"):
        registry.load_checkpoint(tmp_path / "pretrain_512.pth", lab_models)
    data = registry.read_checkpoint(tmp_path / "pretrain_512.pth")
    model = registry.model_from_checkpoint(data, lab_models, tmp_path / "pretrain_512.pth", module_name="model",
                                           config=cfg)
    assert torch.equal(model.output.weight, reference.output.weight)
    del raw["_orig_mod.layers.1.ffn_norm.weight"]
    torch.save(raw, tmp_path / "broken.pth")
    with pytest.raises(MinimindError, match="missing layers.1.ffn_norm.weight"):
        registry.model_from_checkpoint(registry.read_checkpoint(tmp_path / "broken.pth"), lab_models,
                                       tmp_path / "broken.pth", module_name="model", config=cfg)
    raw["surplus.weight"] = torch.zeros(1)
    with pytest.raises(MinimindError, match="unexpected surplus.weight"):
        registry.model_from_checkpoint(raw, lab_models, tmp_path / "broken.pth", module_name="model", config=cfg)


def test_same_bytes_same_module_edited_bytes_new_module(lab_models):
    first = registry.load_module(lab_models, "model")
    assert registry.load_module(lab_models, "model") is first
    (lab_models / "model.py").write_text((lab_models / "model.py").read_text() + "\nEDITED = True\n")
    second = registry.load_module(lab_models, "model")
    assert second is not first and second.EDITED


@pytest.mark.parametrize("checkpoint, module", [("runs/0.1.0/checkpoints/pretrain_16.pth", "model_0_1_0"),
                                                ("runs/0.1.1/checkpoints/last.pth", "model_0_1_1")])
def test_checkpoints_of_the_previous_version_load(tmp_path, checkpoint, module):
    """The dc717c6 lab (tests/fixtures/README.md): its checkpoints read and build unchanged."""
    import tarfile

    with tarfile.open(Path(__file__).parent / "fixtures" / "lab_dc717c6.tar.xz") as archive:
        archive.extractall(tmp_path, filter="data")
    lab = tmp_path / "legacy"
    data = registry.read_checkpoint(lab / checkpoint)
    assert data["format"] == registry.FORMAT and data["module"] == module
    model = registry.model_from_checkpoint(data, lab / "models", lab / checkpoint)
    assert type(model).__module__.startswith(f"minimind_models.{module}_")
    assert torch.equal(model.memory_bank, data["model"]["memory_bank"])
    loaded, again = registry.load_checkpoint(lab / checkpoint, lab / "models")
    assert again["step"] == data["step"] and torch.equal(loaded.output.weight, model.output.weight)
