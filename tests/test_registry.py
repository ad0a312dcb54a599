"""models/registry.py: snapshots, loading modules by name, checkpoints (atomic, strict, clear errors)."""

import shutil
from pathlib import Path

import pytest
import torch

from minimind.errors import GateRefused, MinimindError
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


def test_module_names():
    assert registry.module_name_for("1.4.8") == "model_1_4_8"
    for bad in ("1.4", "1.4.8.1", "../1.4.8", "1.4.8; rm -rf x", "01.4.8", 148):
        with pytest.raises(ValueError):
            registry.module_name_for(bad)
    for bad in ("../model", "model.py", "model_1_4", "os", "model_1_4_8/../../x"):
        with pytest.raises(MinimindError, match="model_X_Y_Z"):
            registry.load_module(REAL_MODELS, bad)


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
    registry.save_checkpoint(tmp_path / "ckpt.pth", model, {"step": 7})

    # the living file changes its computation (a research edit); the snapshot must not care
    source = (lab_models / "model.py").read_text()
    edited = source.replace("return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))",
                            "return self.dropout(self.w2(F.gelu(self.w1(x)) * self.w3(x)))")
    edited = edited.replace("h = x + h_attn\n", "h = x + 2 * h_attn\n")
    assert edited != source
    (lab_models / "model.py").write_text(edited)

    loaded, ckpt = registry.load_checkpoint(tmp_path / "ckpt.pth", lab_models)
    assert ckpt["module"] == "model_1_0_0" and ckpt["step"] == 7 and ckpt["model_config"]["preset"] == "memory"
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
    registry.save_checkpoint(tmp_path / "c.pth", model, module_name="model")
    loaded, _ = registry.load_checkpoint(tmp_path / "c.pth", lab_models)
    assert loaded.memory_entry(5) == [7, 8, 9]
    assert torch.equal(loaded.memory_frozen, model.memory_frozen)
    registry.save_checkpoint(tmp_path / "d.pth", model, "model", {"note": "positional order"})
    assert registry.load_checkpoint(tmp_path / "d.pth", lab_models)[1]["note"] == "positional order"
    with pytest.raises(ValueError, match="reserved"):
        registry.save_checkpoint(tmp_path / "e.pth", model, {"model": 1})


@pytest.mark.parametrize("damage", ["half", "header", "empty", "garbage"])
def test_truncated_or_corrupted_checkpoint_is_a_one_line_error(lab_models, tmp_path, damage):
    model = registry.build_model(lab_models, "model", TINY)
    path = tmp_path / "c.pth"
    registry.save_checkpoint(path, model, {"step": 1})
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "header": data[:100], "empty": b"",
                      "garbage": b"not a checkpoint at all" * 10}[damage])
    with pytest.raises(MinimindError) as error:
        registry.load_checkpoint(path, lab_models)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and ("truncated or corrupted" in message)


def test_checkpoint_with_code_objects_is_refused(lab_models, tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"module": "model", "model_config": TINY, "model": {}, "hook": Path("x")}, path)
    with pytest.raises(MinimindError, match="may hold only tensors and plain data"):
        registry.load_checkpoint(path, lab_models)


def test_missing_checkpoint_and_mismatched_config(lab_models, tmp_path):
    with pytest.raises(MinimindError, match="not found"):
        registry.load_checkpoint(tmp_path / "nope.pth", lab_models)
    model = registry.build_model(lab_models, "model", TINY)
    registry.save_checkpoint(tmp_path / "c.pth", model)
    with pytest.raises(MinimindError, match="does not fit"):
        registry.load_checkpoint(tmp_path / "c.pth", lab_models, config={**TINY, "dim": 128})
    with pytest.raises(MinimindError, match="unknown model config key"):
        registry.build_model(lab_models, "model", {**TINY, "knowlege_num": 4})


def test_raw_minimind2_state_dict_loads_strictly(lab_models, tmp_path):
    cfg = {**TINY, "preset": "original"}
    reference = registry.build_model(lab_models, "model", cfg)
    raw = {f"_orig_mod.{k}": v.clone() for k, v in reference.state_dict().items()}  # as a compiled model saves it
    torch.save(raw, tmp_path / "pretrain_512.pth")
    with pytest.raises(MinimindError, match="give module_name and config"):
        registry.load_checkpoint(tmp_path / "pretrain_512.pth", lab_models)
    model, ckpt = registry.load_checkpoint(tmp_path / "pretrain_512.pth", lab_models, module_name="model", config=cfg)
    assert ckpt["module"] == "model" and torch.equal(model.output.weight, reference.output.weight)
    del raw["_orig_mod.layers.1.ffn_norm.weight"]
    torch.save(raw, tmp_path / "broken.pth")
    with pytest.raises(MinimindError, match="missing layers.1.ffn_norm.weight"):
        registry.load_checkpoint(tmp_path / "broken.pth", lab_models, module_name="model", config=cfg)


def test_same_bytes_same_module_edited_bytes_new_module(lab_models):
    first = registry.load_module(lab_models, "model")
    assert registry.load_module(lab_models, "model") is first
    (lab_models / "model.py").write_text((lab_models / "model.py").read_text() + "\nEDITED = True\n")
    second = registry.load_module(lab_models, "model")
    assert second is not first and second.EDITED
