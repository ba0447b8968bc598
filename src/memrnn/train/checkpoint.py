"""Checkpoints: one folder per tag (`last`, `prev`, `best`) inside the run folder.

    <run>/last/model.safetensors    weights (complex tensors stored as (..., 2) real views)
    <run>/last/model_config.json    the ModelConfig that rebuilds the model
    <run>/last/training.pt          optimiser, scheduler, RNG states, step, metrics: tensors,
                                    numbers, strings, lists and dicts only (torch.save)
    <run>/last/vocab.json           (text models) the tokens, so that prompts can be encoded
    <run>/last/manifest.json        size and SHA-256 of every other file, written last

A checkpoint is written into a temporary folder beside the target, every file fsynced, then
swapped in with two renames (old -> .<tag>.old, new -> <tag>). A failure at any point leaves
a complete checkpoint: the previous one at <tag> (or, between the two renames, at
.<tag>.old, which `find_checkpoint` falls back to). The `last` checkpoint it replaces is kept
as `prev`, the fallback when `last` turns out damaged.

Loading verifies the manifest: a truncated or altered file raises `CheckpointError` naming
it (checkpoints written before manifests existed load unverified). A manifest must name the
weights and the model config, and only plain file names inside its folder; a file in a
checkpoint may not be a link. Before any weight is loaded the model config is checked
against size limits (`memrnn.train.config.check_model_size`) and against the size of the
weights file, and the weights' names, shapes and kinds of dtype against the model it
describes: a tampered checkpoint is a `CheckpointError`, never a crash or a huge allocation.
A reader that finds a checkpoint being replaced (caught between the two renames below)
tries again before calling it damaged. Nothing in a checkpoint is
unpickled as an arbitrary object: the weights are safetensors, the configs JSON, and
training.pt is read with `torch.load(weights_only=True)`, which rebuilds tensors and plain
values only (plus numpy's RNG-state array, which earlier versions saved); any other object
in it is refused with a `CheckpointError`, since a manifest only proves that the files are
the ones its writer meant, not that the writer is trusted.

A write that fails (a full disk, no permission) raises `CheckpointWriteError`, an OSError
naming the path and the checkpoint that is still intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from memrnn.models.config import ModelConfig
from memrnn.models.registry import build_model
from memrnn.train.config import check_model_size
from memrnn.train.runfolder import (
    RunFiles,
    create_new,
    make_private_dir,
    refuse_link,
    temporary_name,
)

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TRAINING = "training.pt"
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
TAGS = ("best", "last")
# Where to look for a tag, in order: the tag, the tag mid-swap, then older copies.
FALLBACKS = {"last": ("last", ".last.old", "prev"), "best": ("best", ".best.old")}


class CheckpointError(Exception):
    """A checkpoint folder that is incomplete, truncated or altered since it was written."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions); the message names the path and
    the checkpoint that is still intact."""


# The only non-plain objects `load_training` accepts: numpy's RNG state array, as saved by
# earlier versions (numpy 1 and 2 module paths). They rebuild an array of numbers, nothing else.
_LEGACY_NUMPY = [
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def weights_to_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous, unshared copies of the state dict; complex tensors as real views."""
    tensors, complex_keys = {}, []
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_complex():
            value = torch.view_as_real(value)
            complex_keys.append(key)
        tensors[key] = value.contiguous().clone()
    return tensors, {"complex": json.dumps(complex_keys)}


def tensors_to_weights(
    tensors: dict[str, Tensor],
    metadata: dict[str, str] | None,
) -> dict[str, Tensor]:
    complex_keys = _complex_keys(metadata)
    return {k: torch.view_as_complex(v) if k in complex_keys else v for k, v in tensors.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    model: nn.Module,
    model_config: ModelConfig,
    training: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Atomically writes checkpoint `tag` under `run_dir`; returns its folder.

    `extra_files`: name -> text of further files (e.g. vocab.json), covered by the manifest.
    Replacing `last` keeps the replaced checkpoint as `prev`.
    """
    run_dir = Path(run_dir)
    try:
        return _save_checkpoint(run_dir, tag, model, model_config, training, extra_files)
    except OSError as err:
        if isinstance(err, CheckpointWriteError):
            raise
        raise CheckpointWriteError(
            err.errno,
            f"writing checkpoint {tag!r} failed at {str(err.filename or run_dir)!r} "
            f"({err.strerror or err}); {_survivor(run_dir, tag)}",
        ) from None


def _survivor(run_dir: Path, tag: str) -> str:
    """Which checkpoint of `tag` is intact after a failed write, in words."""
    for folder in _candidates(run_dir, tag):
        with contextlib.suppress(CheckpointError, OSError):
            verify_checkpoint(folder)
            return f"the previous checkpoint {str(folder)!r} is intact"
    return f"no intact {tag!r} checkpoint is left in {str(run_dir)!r}"


def _complex_keys(metadata: dict[str, str] | None) -> set[str]:
    """The names of the complex tensors recorded in a weights file's metadata; ValueError."""
    try:
        keys = json.loads((metadata or {}).get("complex", "[]"))
    except RecursionError:
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("its metadata 'complex' is not a list of tensor names")
    return set(keys)


def _write_bytes(path: Path, data: bytes) -> None:
    with os.fdopen(create_new(path), "wb") as f:
        f.write(data)


def _save_checkpoint(
    run_dir: Path,
    tag: str,
    model: nn.Module,
    model_config: ModelConfig,
    training: dict[str, Any] | None,
    extra_files: dict[str, str] | None,
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / tag
    old = run_dir / f".{tag}.old"
    prev = run_dir / "prev"
    names = [final.name, old.name] + ([prev.name] if tag == "last" else [])
    for name in names:
        refuse_link(run_dir / name)
    files = RunFiles(run_dir)
    if files.exists:
        # A run folder: these names become the run's before they are written.
        for name in names:
            files.claim(name)
    tmp = make_private_dir(temporary_name(final))
    try:
        tensors, metadata = weights_to_tensors(model)
        # Serialised in memory, written with open(): a full disk is an OSError naming the file.
        _write_bytes(tmp / WEIGHTS, safetensors_bytes(tensors, metadata=metadata))
        _write_bytes(tmp / MODEL_CONFIG, model_config.to_json().encode())
        buffer = io.BytesIO()
        torch.save(training or {}, buffer)
        _write_bytes(tmp / TRAINING, buffer.getvalue())
        names = [WEIGHTS, MODEL_CONFIG, TRAINING]
        for name, text in (extra_files or {}).items():
            _write_bytes(tmp / name, text.encode())
            names.append(name)
        for name in names:
            _fsync_file(tmp / name)
        # The manifest goes last: a folder with a valid manifest has every file complete.
        manifest = {
            n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names
        }
        _write_bytes(tmp / MANIFEST, json.dumps({"files": manifest}, indent=2).encode())
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        # Without `final`, a leftover .<tag>.old is the previous checkpoint (a crash between
        # the two renames): it is kept, and becomes `prev` below.
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tag == "last" and old.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(old, prev)
        _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(folder: str | Path) -> None:
    """Checks every file against the manifest; CheckpointError naming the first bad one.

    A folder without a manifest (written by an older version) passes if its files exist.
    """
    folder = Path(folder)
    for name in (WEIGHTS, MODEL_CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
    for name in (WEIGHTS, MODEL_CONFIG, MANIFEST, TRAINING, VOCAB):
        if (folder / name).is_symlink():
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is refused: {name} is a link, and a checkpoint "
                "holds its own files"
            )
    if not (folder / MANIFEST).is_file():
        return
    files = _read_manifest(folder)
    for name, entry in files.items():
        path = folder / name
        if path.is_symlink():
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is refused: {name} is a link, and a checkpoint "
                "holds its own files"
            )
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is damaged: {name} has {size} bytes, "
                f"expected {entry['bytes']} (truncated or overwritten)"
            )
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is damaged: {name} does not match its SHA-256 "
                "in the manifest"
            )


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {name: {bytes, sha256}}, every name a plain file name of the folder's
    own; CheckpointError otherwise."""
    damaged = f"checkpoint {str(folder)!r} is damaged: {MANIFEST} "
    try:
        with open(folder / MANIFEST, "rb") as f:
            raw = f.read(1 << 20)
        files = json.loads(raw)["files"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise CheckpointError(damaged + "is not readable") from None
    if not isinstance(files, dict):
        raise CheckpointError(damaged + "does not map file names to sizes and hashes")
    for name, entry in files.items():
        if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name or "\0" in name:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is refused: {MANIFEST} names {name[:80]!r}, "
                "not a file of its own folder"
            )
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if not ok or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CheckpointError(damaged + f"has no valid size and hash for {name[:80]!r}")
    missing = [n for n in (WEIGHTS, MODEL_CONFIG) if n not in files]
    if missing:
        raise CheckpointError(damaged + f"does not cover {', '.join(missing)}")
    return files


def _candidates(path: Path, tag: str | None) -> list[Path]:
    if (path / WEIGHTS).is_file():
        return [path]
    tags = (tag,) if tag else TAGS
    found = []
    for t in tags:
        for name in FALLBACKS.get(t, (t, f".{t}.old")):
            candidate = path / name
            if (candidate / WEIGHTS).is_file() and (candidate / MODEL_CONFIG).is_file():
                found.append(candidate)
    return found


def _not_found(path: Path, tag: str | None) -> FileNotFoundError:
    tags = (tag,) if tag else TAGS
    return FileNotFoundError(
        f"no checkpoint in {str(path)!r} (expected {'/'.join(tags)}/{WEIGHTS}); "
        "pass a run folder written by `memrnn train --out`"
    )


def find_checkpoint(path: str | Path, tag: str | None = None) -> Path:
    """The checkpoint folder for `path`: a checkpoint folder itself, or a run folder (then
    `tag`, by default `best` if present, else `last`). FileNotFoundError when there is none.
    The folder is not verified (see `verify_checkpoint`, `find_good_checkpoint`)."""
    path = Path(path)
    found = _candidates(path, tag)
    if not found:
        raise _not_found(path, tag)
    return found[0]


def find_good_checkpoint(path: str | Path, tag: str = "last") -> tuple[Path, list[str]]:
    """The first checkpoint of `tag` (then its fallbacks, e.g. last -> prev) that passes
    `verify_checkpoint`, and one message per damaged checkpoint skipped on the way.

    FileNotFoundError when there is none at all; CheckpointError when every one is damaged.
    """
    path = Path(path)
    for attempt in range(RETRIES + 1):
        found = _candidates(path, tag)
        if not found:
            raise _not_found(path, tag)
        identity = [_identity(f) for f in found]
        skipped = []
        for folder in found:
            try:
                verify_checkpoint(folder)
                return folder, skipped
            except (CheckpointError, FileNotFoundError) as err:
                # A file gone while it was read: the folder was renamed away (retried below).
                skipped.append(str(err))
        if attempt == RETRIES or identity == [_identity(f) for f in found]:
            break
        time.sleep(RETRY_WAIT * (attempt + 1))
    raise CheckpointError("; ".join(skipped) + "; no intact checkpoint left to use")


# A checkpoint replaced while it is read (between its two renames) is read again; a folder
# that did not change meanwhile is damaged at once.
RETRIES = 4
RETRY_WAIT = 0.05


def _identity(folder: Path) -> tuple[int, int, bytes | None] | None:
    """What tells one checkpoint folder from the next one saved under its name: inode and
    mtime alone do not (a new folder can reuse the freed inode within one clock tick), so its
    manifest, which hashes the step's training state, is part of it."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    try:
        with open(folder / MANIFEST, "rb") as f:
            manifest: bytes | None = f.read(1 << 20)
    except OSError:
        manifest = None
    return st.st_ino, st.st_mtime_ns, manifest


def load_model(
    path: str | Path, tag: str | None = None, map_location: str = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Rebuilds the model of a checkpoint from its config and loads its weights (verified
    against the manifest: CheckpointError when damaged)."""
    for attempt in range(RETRIES + 1):
        folder = find_checkpoint(path, tag)
        before = _identity(folder)
        try:
            verify_checkpoint(folder)
            config = read_model_config(folder)
            model = _build_checked(config, folder)
            load_weights(model, folder, map_location)
            return model, config
        except (CheckpointError, FileNotFoundError):
            if attempt == RETRIES or _identity(folder) == before:
                raise
        time.sleep(RETRY_WAIT * (attempt + 1))
    raise AssertionError("unreachable")


def _build_checked(config: ModelConfig, folder: str | Path) -> nn.Module:
    """The model of `config`, once the weights file is large enough to hold it; a config
    that no model of this version matches is a CheckpointError."""
    weights = Path(folder) / WEIGHTS
    _read_weights_header(folder)
    if config.arch == "stack":
        # Every block holds at least one d_model-wide norm, at two or more bytes a value.
        least = 2 * config.n_layers * config.d_model
        size = weights.stat().st_size if weights.is_file() else 0
        if size < least:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is damaged: {MODEL_CONFIG} describes "
                f"{config.n_layers} layers of width {config.d_model}, more than the "
                f"{size} bytes of {WEIGHTS} can hold"
            )
    try:
        return build_model(config)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {MODEL_CONFIG} describes no model this "
            f"version builds ({' '.join(str(err).split())[:200]})"
        ) from None


def read_model_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / MODEL_CONFIG
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object of fields")
        config = ModelConfig.from_dict(data)
        check_model_size(config)
        return config
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is incomplete: {MODEL_CONFIG} is missing"
        ) from None
    except (ValueError, TypeError, KeyError, RecursionError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {MODEL_CONFIG} "
            f"cannot be read ({' '.join(str(err).split())})"
        ) from None


def _read_weights_header(folder: str | Path) -> dict[str, str] | None:
    """The metadata of the weights file (its header only is read); CheckpointError."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as f:
            return f.metadata()
    except Exception as err:
        # safetensors raises its own error type (and OSError) on a damaged header.
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {WEIGHTS} cannot be "
            f"read ({' '.join(str(err).split())[:200]})"
        ) from None


def load_weights(model: nn.Module, folder: str | Path, map_location: str = "cpu") -> None:
    path = str(Path(folder) / WEIGHTS)
    metadata = _read_weights_header(folder)
    try:
        complex_keys = _complex_keys(metadata)
        loaded = load_file(path, device=map_location)
    except Exception as err:
        # safetensors raises its own error type (and OSError) on a damaged header or data.
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {WEIGHTS} cannot be "
            f"read ({' '.join(str(err).split())[:200]})"
        ) from None
    problem = _weights_mismatch(model.state_dict(), loaded, complex_keys)
    if problem:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} does not match its {MODEL_CONFIG}: {problem}"
        )
    model.load_state_dict(tensors_to_weights(loaded, metadata))


def _weights_mismatch(
    expected: dict[str, Tensor], loaded: dict[str, Tensor], complex_keys: set[str]
) -> str:
    """What differs between a model's state dict and the tensors of a weights file: names,
    shapes (complex tensors stored as (..., 2) real views) or kinds of dtype; '' if none."""
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        return "weights " + "; ".join(parts)
    for key, want in expected.items():
        got = loaded[key]
        shape = tuple(want.shape) + ((2,) if want.is_complex() else ())
        if (key in complex_keys) != want.is_complex():
            return f"{key} is {'not ' if want.is_complex() else ''}recorded as complex"
        if tuple(got.shape) != shape:
            return f"{key} has shape {tuple(got.shape)}, the model needs {shape}"
        if want.is_floating_point() or want.is_complex():
            if not got.is_floating_point():
                return f"{key} holds {got.dtype}, the model needs floating-point values"
        elif got.dtype != want.dtype:
            return f"{key} holds {got.dtype}, the model needs {want.dtype}"
    return ""


def load_training(folder: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The training state of a checkpoint (optimiser, scheduler, RNG states, step, config).

    Read with `torch.load(weights_only=True)`: a file holding any other object than tensors,
    plain values and numpy's RNG state is refused with a CheckpointError, unexecuted.
    """
    path = Path(folder) / TRAINING
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is None:
            # Not a forbidden object but bytes that are no pickle at all.
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is damaged: {TRAINING} cannot be read "
                "(not a training state written by `memrnn train`)"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is refused: {TRAINING} asks to load "
            f"{refused.group(1)}, not a tensor or plain value, and loading it could run code; "
            "use a checkpoint written by `memrnn train`, or retrain"
        ) from None
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is incomplete: {TRAINING} is missing"
        ) from None
    except Exception as err:
        # A truncated pickle raises EOFError, UnpicklingError or RuntimeError (zip reader).
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {TRAINING} cannot be "
            f"read ({' '.join(str(err).split())})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {TRAINING} holds a "
            f"{type(state).__name__}, not the training state"
        )
    return state


def load_vocab(folder: str | Path) -> list[str] | None:
    """The token strings saved with a text model's checkpoint, or None."""
    path = Path(folder) / VOCAB
    if not path.is_file():
        return None
    try:
        tokens = json.loads(path.read_text(encoding="utf-8"))["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is damaged: {VOCAB} is not a list of tokens"
        ) from None
    return tokens


__all__ = [
    "MANIFEST",
    "MODEL_CONFIG",
    "TAGS",
    "TRAINING",
    "VOCAB",
    "WEIGHTS",
    "CheckpointError",
    "CheckpointWriteError",
    "find_checkpoint",
    "find_good_checkpoint",
    "load_model",
    "load_training",
    "load_vocab",
    "load_weights",
    "read_model_config",
    "save_checkpoint",
    "verify_checkpoint",
]
