"""A checkpoint never runs code: a pickle payload planted in training.pt (with the manifest
updated, as a sender of a run folder could) does not execute on any command that opens a
checkpoint; checkpoints of earlier versions (numpy RNG state) still load and resume."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import sys

import numpy as np
import pytest
import torch

from memrnn.cli import main
from memrnn.train.checkpoint import CheckpointError, load_training

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _replace_with_manifest(folder, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_flags):
    """A run folder whose every checkpoint's training.pt carries the payload."""
    root = tmp_path_factory.mktemp("planted")
    run = root / "run"
    args = ["train", "--model", "gru-small", "--task", "flip-flop", "--steps", "2"]
    assert main([*args, "--out", str(run), *tiny_flags]) == 0
    marker = root / "PAYLOAD_RAN"
    for tag in ("last", "best"):
        # Our own file, just written: safe to read in full.
        state = torch.load(run / tag / "training.pt", weights_only=False)
        state["extra"] = _Payload(str(marker))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        _replace_with_manifest(run / tag, "training.pt", buffer.getvalue())
    return run, marker


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--checkpoint", "{run}", "--samples", "8"],
        ["stream", "--checkpoint", "{run}"],
        ["generate", "--checkpoint", "{run}", "--prompt", "ab"],
        ["export", "--checkpoint", "{run}", "--out", "{tmp}/step.pt2"],
        ["plot", "--checkpoint", "{run}", "--states", "--out", "{tmp}/states.png"],
        ["plot", "--run", "{run}", "--out", "{tmp}/curves.png"],
        ["train", "--out", "{run}", "--resume", "--steps", "3"],
    ],
    ids=lambda c: c[0] + ("-states" if "--states" in c else ""),
)
def test_a_planted_payload_never_runs(planted, command, tmp_path, capsys, monkeypatch):
    run, marker = planted
    argv = [a.format(run=run, tmp=tmp_path) for a in command]
    monkeypatch.setattr(sys, "stdin", io.StringIO("0.5 1\n"))
    code = main(argv)
    assert not marker.exists(), "the payload in training.pt was executed"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if command[0] in ("eval", "train") or "--states" in command:
        # These commands need the training state, and refuse it with one line.
        assert code == 2
        assert err.count("\n") == 1 and re.search(r"training.pt asks to load \S*open", err)
    else:
        assert code in (0, 2)


def test_load_training_refuses_objects_and_names_them(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"step": 1, "x": _Payload(str(marker))}, tmp_path / "training.pt")
    with pytest.raises(CheckpointError, match=r"is refused: training.pt asks to load \S*open"):
        load_training(tmp_path)
    assert not marker.exists()


def test_a_checkpoint_of_an_earlier_version_loads_and_resumes(tmp_path, capsys, tiny_flags):
    """Earlier versions saved numpy's RNG state as numpy's own tuple (an ndarray inside)."""
    args = ["train", "--model", "gru-small", "--task", "flip-flop", "--steps", "4"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--out", str(full), *tiny_flags]) == 0
    assert main([*args, "--out", str(cut), "--stop-at", "2", *tiny_flags]) == 0
    folder = cut / "last"
    state = load_training(folder)
    numpy_state = state["rng"]["numpy"]
    assert isinstance(numpy_state, dict) and isinstance(numpy_state["keys"], torch.Tensor)
    state["rng"]["numpy"] = (
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _replace_with_manifest(folder, "training.pt", buffer.getvalue())
    assert isinstance(load_training(folder)["rng"]["numpy"][1], np.ndarray)

    assert main(["train", "--out", str(cut), "--resume"]) == 0
    from memrnn.train import load_model

    a, _ = load_model(full, "last")
    b, _ = load_model(cut, "last")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0, msg=key)


def test_saved_rng_states_are_plain_tensors_and_values(tmp_path, tiny_flags):
    args = ["train", "--model", "gru-small", "--task", "flip-flop", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "r"), *tiny_flags]) == 0
    rng = load_training(tmp_path / "r" / "last")["rng"]
    # weights_only=True without any allow-list: nothing but tensors and plain values.
    raw = torch.load(tmp_path / "r" / "last" / "training.pt", weights_only=True)
    assert raw["rng"]["numpy"]["kind"] == "MT19937"
    assert isinstance(rng["random"], tuple) and rng["random"][0] == random.getstate()[0]
