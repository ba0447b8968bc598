import errno
import os

import pytest
import torch

import memrnn.train.checkpoint as checkpoint
from memrnn.models import build_model, list_models, model_config
from memrnn.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    find_checkpoint,
    find_good_checkpoint,
    load_model,
    load_training,
    load_vocab,
    save_checkpoint,
    verify_checkpoint,
)
from memrnn.units import UNITS


def _model(seed: int = 0):
    name = "lru-small" if "lru" in UNITS else list_models()[0]  # the LRU has complex weights
    cfg = model_config(name, 2, 3, d_model=8)
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_rebuilds_model_and_training_state(tmp_path):
    model, cfg = _model()
    folder = save_checkpoint(tmp_path, "last", model, cfg, {"step": 7, "best": 0.5})
    assert sorted(os.listdir(folder)) == [
        "manifest.json",
        "model.safetensors",
        "model_config.json",
        "training.pt",
    ]
    loaded, loaded_cfg = load_model(tmp_path)
    assert loaded_cfg == cfg and _same(model, loaded)
    assert load_training(folder)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_a_failure_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    old, cfg = _model(0)
    save_checkpoint(tmp_path, "last", old, cfg, {"step": 1})
    new, _ = _model(1)

    real_write = checkpoint._write_bytes

    def disk_full_at_training_pt(path, data):
        if path.name == "training.pt":
            with open(path, "wb") as f:
                f.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", disk_full_at_training_pt)
    # One line naming the file that failed, the reason and the checkpoint that survived.
    with pytest.raises(
        CheckpointWriteError,
        match=r"writing checkpoint 'last' failed at '.*training\.pt' \(No space left on "
        r"device\); the previous checkpoint '.*last' is intact",
    ):
        save_checkpoint(tmp_path, "last", new, cfg, {"step": 2})
    monkeypatch.undo()
    loaded, _ = load_model(tmp_path, "last")
    assert _same(old, loaded) and load_training(tmp_path / "last")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_interrupted_swap_falls_back_to_the_old_checkpoint(tmp_path):
    model, cfg = _model()
    save_checkpoint(tmp_path, "last", model, cfg, {"step": 3})
    # A crash between the two renames leaves only the old folder.
    os.replace(tmp_path / "last", tmp_path / ".last.old")
    assert find_checkpoint(tmp_path) == tmp_path / ".last.old"
    loaded, _ = load_model(tmp_path)
    assert _same(model, loaded)
    save_checkpoint(tmp_path, "last", model, cfg, {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "prev"]


def test_best_is_preferred_and_missing_checkpoint_is_explained(tmp_path):
    model, cfg = _model()
    save_checkpoint(tmp_path, "last", model, cfg, {"step": 2})
    save_checkpoint(tmp_path, "best", model, cfg, {"step": 1})
    assert find_checkpoint(tmp_path) == tmp_path / "best"
    assert find_checkpoint(tmp_path, "last") == tmp_path / "last"
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(tmp_path / "elsewhere")


def test_manifest_detects_truncation_and_alteration(tmp_path):
    model, cfg = _model()
    folder = save_checkpoint(
        tmp_path,
        "last",
        model,
        cfg,
        {"step": 1},
        extra_files={"vocab.json": '{"tokens": ["a", "b"]}'},
    )
    verify_checkpoint(folder)
    assert load_vocab(folder) == ["a", "b"]
    path = folder / "model_config.json"
    text = path.read_text()
    path.write_text(text[:-5])
    with pytest.raises(CheckpointError, match="model_config.json has .* bytes, expected"):
        load_model(folder)
    path.write_text(text.replace("8", "9", 1))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        verify_checkpoint(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is not readable"):
        verify_checkpoint(folder)
    (folder / "manifest.json").unlink()
    # A checkpoint from before manifests existed loads unverified.
    verify_checkpoint(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        verify_checkpoint(folder)


def test_prev_is_kept_and_used_when_last_is_damaged(tmp_path):
    model, cfg = _model()
    save_checkpoint(tmp_path, "last", model, cfg, {"step": 1})
    save_checkpoint(tmp_path, "last", model, cfg, {"step": 2})
    assert load_training(tmp_path / "prev")["step"] == 1
    assert find_good_checkpoint(tmp_path) == (tmp_path / "last", [])
    (tmp_path / "last" / "training.pt").write_bytes(b"x")
    folder, skipped = find_good_checkpoint(tmp_path)
    assert folder == tmp_path / "prev" and len(skipped) == 1 and "training.pt" in skipped[0]
    (tmp_path / "prev" / "training.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no intact checkpoint left"):
        find_good_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_good_checkpoint(tmp_path / "elsewhere")


def test_unreadable_files_without_a_manifest_are_checkpoint_errors(tmp_path):
    model, cfg = _model()
    folder = save_checkpoint(tmp_path, "last", model, cfg, {"step": 1})
    (folder / "manifest.json").unlink()
    (folder / "training.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="training.pt cannot be read"):
        load_training(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        load_model(folder)
