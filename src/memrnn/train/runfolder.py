"""The run folder: what it records, who may write it, and how files in it are written.

    <run>/config.yaml     the resolved TrainConfig of the latest invocation (model, task, data,
                          optimisation); `--resume` refuses settings that change what is trained
    <run>/metrics.csv     one row per logged step (memrnn.train.logging)
    <run>/last, prev, best  checkpoints (memrnn.train.checkpoint)
    <run>/train.lock      held while a process writes the run: its PID and host

A second `memrnn train` on the same folder is refused while the lock's process is alive; a
lock left by a killed process (same host, PID no longer running) is stale and taken over.
A new run (no `--resume`) refuses a non-empty folder unless `--overwrite`, which deletes the
run files above and leaves any other file alone. Text files are written atomically
(temporary file, fsync, rename): a full disk leaves the previous file or none, never an empty
or half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import yaml

from memrnn.train.config import UsageError

CONFIG_YAML = "config.yaml"
LOCK = "train.lock"
# What `--overwrite` deletes: every file or folder a training run writes.
RUN_FILES = (
    CONFIG_YAML,
    "metrics.csv",
    "metrics.csv.tmp",
    "last",
    "prev",
    "best",
    ".last.old",
    ".best.old",
    "tensorboard",
    "curves.png",
    "states.png",
)
# ... and the evaluation results written into it by `memrnn eval`.
RUN_FILE_PATTERNS = ("eval_*.json", ".*.tmp-*", ".config.yaml.*.tmp")


def describe_os_error(err: OSError) -> str:
    """'<path>: <reason>' of an OSError, in one line."""
    reason = err.strerror or " ".join(str(err).split())
    where = err.filename if err.filename is not None else "?"
    return f"{str(where)!r}: {reason}"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file beside it, fsynced, then renamed.

    On any error the temporary file is removed and `path` keeps its previous content (or
    stays absent); an OSError names `path` and says so.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            kept = "its previous content is kept" if path.exists() else "it was not created"
            raise OSError(err.errno, f"{err.strerror or err}; {kept}", str(path)) from None
        raise


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The saved config.yaml of a run folder, as a dict; UsageError when missing or damaged."""
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} has no {CONFIG_YAML}; is it a run folder from `memrnn train`?"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, OSError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UsageError(
            f"{str(path)!r} is damaged ({reason}); restore it, or start a new run with --overwrite"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(
            f"{str(path)!r} is damaged (not a mapping of keys to values); restore it, "
            "or start a new run with --overwrite"
        )
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to another user.
        return True
    except (OverflowError, ValueError):
        return False
    return True


class RunLock:
    """An exclusive claim of a run folder by this process (see the module docstring).

    `acquire` raises UsageError naming the holder when a live process holds the folder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            for _ in range(3):
                try:
                    # link() creates the lock with its content in one step, or fails if it exists.
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder is None:
                    continue
                pid, host = holder.get("pid"), holder.get("host")
                stale = (
                    isinstance(pid, int) and host == me["host"] and not _pid_alive(pid)
                ) or not holder
                if not stale:
                    raise UsageError(
                        f"run folder {str(self.path.parent)!r} is being written by process "
                        f"{pid} on {host} (lock {str(self.path)!r}); wait for it to end, or "
                        "delete the lock if that process is gone"
                    )
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise UsageError(f"could not take the lock {str(self.path)!r}; try again")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.held = False


def claim_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuses a non-empty `run_dir` for a new run, unless `overwrite` (then its run files
    are deleted). The caller holds the lock."""
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise UsageError(
            f"output folder {str(run_dir)!r} is not empty ({shown}); continue its run with "
            "--resume, start over with --overwrite, or choose another --out"
        )
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for pattern in RUN_FILE_PATTERNS:
        for target in run_dir.glob(pattern):
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink()


__all__ = [
    "CONFIG_YAML",
    "LOCK",
    "RUN_FILES",
    "RunLock",
    "atomic_write_text",
    "claim_new_run",
    "describe_os_error",
    "load_run_config",
]
