"""The run folder: what it records, who may write it, and how files in it are written.

    <run>/config.yaml     the resolved TrainConfig of the latest invocation (model, task, data,
                          optimisation); `--resume` refuses settings that change what is trained
    <run>/metrics.csv     one row per logged step (memrnn.train.logging)
    <run>/last, prev, best  checkpoints (memrnn.train.checkpoint)
    <run>/run-files.json  what the run created: the names above, evaluation results and plots
                          written into the folder, and the tokens of its temporary files
    <run>/train.lock      held while a process writes the run: its PID and host

A run owns exactly what it wrote. `--overwrite` removes only the files its run-file list
names (inside a checkpoint folder: the checkpoint's own files), keeps every other file and
says so; a name the new run must write that holds someone else's file is refused, never
deleted. A folder killed before its first checkpoint holds only run files: a new run starts
in it without `--overwrite`.

Nothing is written through a link: every file is created new (`O_CREAT | O_EXCL |
O_NOFOLLOW`, so an existing file or link is never opened for writing) and renamed into
place, a path that is a symbolic link is refused in one line, and files are appended only
with `O_NOFOLLOW`. Files and folders are created with the modes the umask leaves. Text
files are written atomically (temporary file, fsync, rename): a full disk leaves the
previous file or none, never an empty or half-written one.

A second `memrnn train` on the same folder is refused while the lock's process is alive; a
lock left by a killed process (same host, PID no longer running) is stale and taken over.
Checking and taking over happen under an flock of the folder, which the kernel drops when
its holder dies: however many processes race, one of them holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import yaml

from memrnn.train.config import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

CONFIG_YAML = "config.yaml"
LOCK = "train.lock"
RUN_FILES_LIST = "run-files.json"
# The top-level names a training run writes (besides evaluation results and plots, which
# are recorded when written). `--overwrite` removes them only when the run's list names them.
RUN_FILES = (
    CONFIG_YAML,
    "metrics.csv",
    "last",
    "prev",
    "best",
    ".last.old",
    ".best.old",
    "tensorboard",
)
# What a run writes inside its checkpoint and TensorBoard folders (nothing else is removed).
CHECKPOINT_FILES = (
    "model.safetensors",
    "model_config.json",
    "training.pt",
    "vocab.json",
    "manifest.json",
)
TENSORBOARD_PREFIX = "events.out.tfevents."
# Every temporary file or folder this process creates carries this token; a run records it,
# so that a later invocation removes what a killed one left, and nothing else.
PROCESS_TOKEN = secrets.token_hex(6)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def describe_os_error(err: OSError) -> str:
    """'<path>: <reason>' of an OSError, in one line."""
    reason = err.strerror or " ".join(str(err).split())
    where = err.filename if err.filename is not None else "?"
    return f"{str(where)!r}: {reason}"


def refuse_link(path: str | Path) -> None:
    """OSError (ELOOP) naming `path` when it is a symbolic link: nothing in a run folder is
    written through a link, whose target may lie anywhere."""
    if os.path.islink(path):
        raise OSError(
            errno.ELOOP,
            "is a symbolic link, and a run folder writes nothing through a link; move it away",
            str(path),
        )


def create_new(path: str | Path, flags: int = 0) -> int:
    """A descriptor of the new file `path`, opened for writing: it must not exist (not even
    as a link), so nothing else is ever truncated; its mode follows the umask."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | flags, 0o666)


def open_append(path: str | Path) -> int:
    """A descriptor appending to the existing regular file `path`; ELOOP for a link."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC)


def temporary_name(path: Path) -> Path:
    """A fresh name beside `path` for a temporary file or folder of this process."""
    return path.parent / f".{path.name}.tmp-{PROCESS_TOKEN}-{secrets.token_hex(4)}"


def make_private_dir(path: Path) -> Path:
    """Creates the temporary folder `path` (mode from the umask); it must not exist."""
    os.mkdir(path, 0o777)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` through a new temporary file beside it, fsynced, then renamed.

    `path` may not be a link (OSError). On any error the temporary file is removed and
    `path` keeps its previous content (or stays absent); an OSError names `path` and says so.
    """
    path = Path(path)
    refuse_link(path)
    tmp = None
    try:
        tmp = temporary_name(path)
        fd = create_new(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The saved config.yaml of a run folder, as a dict; UsageError when missing or damaged."""
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} has no {CONFIG_YAML}; is it a run folder from `memrnn train`?"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, OSError, RecursionError) as err:
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


class RunFiles:
    """The list of what a run created in its folder (`run-files.json`): top-level names and
    the tokens of its temporaries. Only what it names is ever removed or replaced."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_FILES_LIST
        self.names: set[str] = set()
        self.tokens: set[str] = set()
        self.exists = self.path.is_file()
        if self.exists:
            self._read()

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            names, tokens = data["files"], data.get("temp_tokens", [])
            for value in (names, tokens):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise TypeError
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise UsageError(
                f"{str(self.path)!r} is damaged (not the list of files a run wrote); "
                "restore it, or move the folder's files away"
            ) from None
        self.names = {n for n in names if _plain_name(n)}
        self.tokens = set(tokens)

    def owns(self, name: str) -> bool:
        return name in self.names or name == RUN_FILES_LIST

    def add(self, *names: str, token: str | None = None) -> None:
        """Records `names` (and a temporary-file token) before they are written."""
        new = set(names) - self.names
        if not new and (token is None or token in self.tokens) and self.exists:
            return
        self.names |= new
        if token is not None:
            self.tokens.add(token)
        data = {"files": sorted(self.names), "temp_tokens": sorted(self.tokens)}
        atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        self.exists = True

    def claim(self, name: str) -> None:
        """Records `name` before this run writes it: UsageError when a file of that name is
        there and was not written by the run, or is a link."""
        path = self.run_dir / name
        if os.path.lexists(path) and not self.owns(name):
            raise UsageError(
                f"{str(path)!r} was not written by this run (it is not in {RUN_FILES_LIST}); "
                "move it away, or choose another --out"
            )
        try:
            refuse_link(path)
        except OSError as err:
            raise UsageError(describe_os_error(err)) from None
        self.add(name)

    def is_temporary(self, name: str) -> bool:
        return any(f".tmp-{token}-" in name for token in self.tokens) and name.startswith(".")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def record_run_file(run_dir: str | Path, name: str) -> None:
    """Adds `name` to the run-file list of `run_dir` when the folder has one (a run folder)."""
    files = RunFiles(run_dir)
    if files.exists:
        files.add(name)


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


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Any:
    """Holds an exclusive flock on `folder` itself: lock take-overs run one at a time, and
    the kernel releases it when its holder dies (no file of its own to go stale)."""
    fd = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


class RunLock:
    """An exclusive claim of a run folder by this process (see the module docstring).

    `acquire` raises UsageError naming the holder when a live process holds the folder.
    Checking a lock and taking over a stale one happen under an flock of the folder, so any
    number of racing processes leave exactly one holder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(4096))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {}

    def _create(self, me: dict[str, Any]) -> bool:
        try:
            fd = create_new(self.path)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        with _folder_guard(self.path.parent):
            if self._create(me):
                self.held = True
                return
            holder = self._holder()
            if holder is not None:
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
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            if self._create(me):
                self.held = True
                return
        raise UsageError(f"could not take the lock {str(self.path)!r}; try again")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.held = False


def remove_leftover_temporaries(run_dir: Path, files: RunFiles) -> None:
    """Removes the temporaries a killed invocation of this run left (named by its tokens)."""
    for entry in run_dir.iterdir():
        if files.is_temporary(entry.name):
            _remove_tree_we_wrote(entry, everything=True)


def _remove_tree_we_wrote(path: Path, everything: bool = False) -> list[str]:
    """Removes the run's files under `path`; returns those it kept (relative names)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return []
    kept = []
    for child in path.iterdir():
        ours = everything or child.name in CHECKPOINT_FILES
        ours = ours or child.name.startswith(TENSORBOARD_PREFIX)
        if ours and (child.is_symlink() or child.is_file()):
            child.unlink()
        elif ours and everything and child.is_dir():
            kept += [f"{child.name}/{k}" for k in _remove_tree_we_wrote(child, everything)]
        else:
            kept.append(child.name)
    if not kept:
        with contextlib.suppress(OSError):
            path.rmdir()
    return [f"{path.name}/{k}" for k in kept]


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / tag / "model.safetensors").is_file() for tag in RUN_FILES[2:7])


def claim_new_run(run_dir: Path, overwrite: bool) -> list[str]:
    """Prepares `run_dir` for a new run; the caller holds the lock.

    An empty folder, or one holding only the files of a run that was stopped before its
    first checkpoint, is taken as it is. Otherwise the folder is refused, unless `overwrite`:
    then the files its run-file list names are removed, and every other file is kept. Returns
    the names kept (a name the new run must write, when not the run's, is a UsageError).
    """
    files = RunFiles(run_dir)
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    restartable = all(files.owns(n) or files.is_temporary(n) for n in present)
    if present and not overwrite and not (restartable and not _has_checkpoint(run_dir)):
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise UsageError(
            f"output folder {str(run_dir)!r} is not empty ({shown}); continue its run with "
            "--resume, start over with --overwrite, or choose another --out"
        )
    kept = []
    for name in present:
        path = run_dir / name
        if name == RUN_FILES_LIST:
            continue
        if files.is_temporary(name):
            _remove_tree_we_wrote(path, everything=True)
        elif files.owns(name):
            kept += _remove_tree_we_wrote(path)
        else:
            kept.append(name)
    # TensorBoard adds files of new names to a folder it finds; every other name is written.
    for name in RUN_FILES:
        if name != "tensorboard" and os.path.lexists(run_dir / name):
            raise UsageError(
                f"{str(run_dir / name)!r} was not written by this run (it is not in "
                f"{RUN_FILES_LIST}, or holds other files), and a new run writes it; move it "
                "away, or choose another --out"
            )
    with contextlib.suppress(FileNotFoundError):
        refuse_link(run_dir / RUN_FILES_LIST)
    fresh = RunFiles.__new__(RunFiles)
    fresh.run_dir, fresh.path = run_dir, run_dir / RUN_FILES_LIST
    fresh.names, fresh.tokens, fresh.exists = set(), set(), False
    try:
        fresh.add(token=PROCESS_TOKEN)
    except OSError as err:
        raise UsageError(describe_os_error(err)) from None
    return kept


def claim_resumed_run(run_dir: Path) -> RunFiles:
    """Records this process's temporaries in the list of the run it resumes (adopting the
    run files of a folder written before lists existed) and removes what a killed
    invocation left. The caller holds the lock."""
    files = RunFiles(run_dir)
    if not files.exists:
        files.names = {n for n in RUN_FILES if os.path.lexists(run_dir / n)}
    for name in RUN_FILES:
        try:
            refuse_link(run_dir / name)
        except OSError as err:
            raise UsageError(describe_os_error(err)) from None
    remove_leftover_temporaries(run_dir, files)
    try:
        files.add(token=PROCESS_TOKEN)
    except OSError as err:
        raise UsageError(describe_os_error(err)) from None
    return files


__all__ = [
    "CONFIG_YAML",
    "LOCK",
    "PROCESS_TOKEN",
    "RUN_FILES",
    "RUN_FILES_LIST",
    "RunFiles",
    "RunLock",
    "atomic_write_bytes",
    "atomic_write_text",
    "claim_new_run",
    "claim_resumed_run",
    "create_new",
    "describe_os_error",
    "load_run_config",
    "make_private_dir",
    "open_append",
    "record_run_file",
    "refuse_link",
    "remove_leftover_temporaries",
    "temporary_name",
]
