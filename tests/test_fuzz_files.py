"""Random data files and tampered run folders: every `memrnn` command on them ends with exit
status 0, 2 (one line on stderr) or 3, raises nothing, and changes no file outside the run
folder (every file of a sibling folder, and the data file, hashed before and after).

The default run draws 200 data files and 120 tampered folders; `-m slow` draws 1200 of each.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memrnn.cli import main

SMALL = ["--batch-size", "2", "--eval-samples", "2", "--model.d_model", "4"]
QUIET = ["--no-progress", "--tensorboard", "false"]
counter = itertools.count()

pytestmark = pytest.mark.usefixtures("one_thread")


def _sibling(root: Path) -> Path:
    """A folder beside the runs, with a file, a nested file and a link into itself."""
    sibling = root / "sibling"
    if not sibling.exists():
        (sibling / "nested").mkdir(parents=True)
        (sibling / "notes.txt").write_text("keep me")
        (sibling / "nested" / "data.bin").write_bytes(bytes(range(256)))
        (sibling / "link").symlink_to(sibling / "notes.txt")
    return sibling


def _case_file(
    tmp_path_factory, folder: str, stem: str, suffix: str, data: bytes
) -> tuple[Path, Path, int, Path]:
    """(root, sibling, case number, path): `data` written to a new file of one fuzz case."""
    root = tmp_path_factory.getbasetemp() / folder
    root.mkdir(exist_ok=True)
    sibling = _sibling(root)
    n = next(counter)
    path = root / f"{stem}-{n}{suffix}"
    path.write_bytes(data)
    return root, sibling, n, path


def _run_cli(argv: list[str], stdin: str = "") -> tuple[int, str]:
    """`main(argv)` in this process: (exit status, stderr). Any exception escapes."""
    err, out = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        sys.stdin = old_stdin
    return code, err.getvalue()


def _check(code: int, err: str, argv: list[str]) -> None:
    assert code in (0, 2, 3), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    assert "\x1b[" not in err, (argv, err)
    if code in (2, 3):
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("memrnn: error: "), (argv, err)


# -- data files ----------------------------------------------------------------------------------
numbers = st.sampled_from([0.0, 1.0, -2.5, 0.5, 1e9, 1e30, -1e30, np.nan, np.inf, -np.inf, 3.0])


@st.composite
def arrays(draw, leading: int | None = None) -> np.ndarray:
    ndim = draw(st.sampled_from([0, 1, 2, 3, 3, 3]))
    shape = [draw(st.integers(0, 6)) for _ in range(ndim)]
    if leading is not None and ndim:
        shape[0] = leading
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool", "str", "object"]))
    size = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(numbers, min_size=size, max_size=size))
    base = np.array(values, dtype=np.float64).reshape(shape)
    if dtype == "str":
        return np.array([f"c{v}" for v in base.ravel()], dtype=str).reshape(shape)
    if dtype == "object":
        return base.astype(object)
    if dtype in ("int64", "bool"):
        return np.nan_to_num(base, posinf=7, neginf=-7).clip(-1e9, 1e9).astype(dtype)
    return base.astype(dtype)


@st.composite
def npz_files(draw) -> bytes:
    n = draw(st.integers(0, 8))
    members = {}
    layout = draw(st.sampled_from(["xy", "splits", "odd"]))
    if layout == "xy":
        members["x"] = draw(arrays(n))
        members["y"] = draw(arrays(n))
        if draw(st.booleans()):
            members["lengths"] = draw(arrays(n))
    elif layout == "splits":
        for split in draw(st.lists(st.sampled_from(["train", "val", "test"]), unique=True)):
            members[f"x_{split}"] = draw(arrays(n))
            members[f"y_{split}"] = draw(arrays(n))
    else:
        members[draw(st.sampled_from(["x", "y", "z", "x_train"]))] = draw(arrays())
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return _mutate(draw, buffer.getvalue())


def _mutate(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none", "none", "truncate", "flip", "empty", "garbage"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "empty":
        return b""
    if how == "garbage":
        return draw(st.binary(max_size=200))
    return data


cells = st.sampled_from(
    ["0", "1", "-2.5", "0.5", "nan", "inf", "-inf", "1e30", "1e9", "abc", "", " ", "1,5", "é"]
)


@st.composite
def csv_files(draw) -> bytes:
    columns = draw(
        st.lists(
            st.sampled_from(["sequence", "split", "x0", "x1", "y", "y1", "z"]),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 12))):
        row = []
        for name in columns:
            if name == "sequence":
                row.append(draw(st.sampled_from(["0", "1", "2", "3", "a"])))
            elif name == "split":
                row.append(draw(st.sampled_from(["train", "val", "test", "", "nope"])))
            else:
                row.append(draw(cells))
        if draw(st.integers(0, 9)) == 0:
            row.append("extra")
        lines.append(",".join(row))
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 0:
        text += "0," + "1" * 140_000 + "\n"
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        data += b"\xff\xfe\x00"
    return _mutate(draw, data)


@st.composite
def sound_npz_files(draw) -> bytes:
    """Files a run can train on, with at most one hostile value (NaN, inf, a huge label)."""
    n = draw(st.integers(12, 20))
    x = np.asarray(draw(st.lists(st.floats(-3, 3), min_size=n * 8, max_size=n * 8)))
    x = x.reshape(n, 4, 2).astype(draw(st.sampled_from(["float32", "float64", "int64"])))
    base = draw(st.sampled_from([0, 1, -5, 10**9, 10**30]))
    y = np.array([base + (i % 2) for i in range(n)], dtype=np.float64 if base > 2**62 else np.int64)
    hostile = draw(st.sampled_from(["none", "none", "nan-x", "inf-y", "lengths", "strings"]))
    members = {"x": x, "y": y}
    if hostile == "nan-x" and x.dtype.kind == "f":
        x[draw(st.integers(0, n - 1)), 1, 0] = np.nan
    elif hostile == "inf-y":
        members["y"] = y.astype(np.float64)
        members["y"][0] = np.inf
    elif hostile == "lengths":
        members["lengths"] = np.array(draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n)))
    elif hostile == "strings":
        members["y"] = np.array([f"class-{v}" for v in y])
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


data_files = st.one_of(
    npz_files().map(lambda b: (".npz", b)),
    sound_npz_files().map(lambda b: (".npz", b)),
    csv_files().map(lambda b: (".csv", b)),
)


def _data_case(tree_hashes, tmp_path_factory, suffix: str, data: bytes) -> None:
    root, sibling, n, path = _case_file(tmp_path_factory, "fuzz-data", "data", suffix, data)
    before = (tree_hashes(sibling), hashlib.sha256(data).hexdigest())
    argv = ["train", "--model", "gru-small", "--task", "arrays", "--task.path", str(path)]
    argv += ["--steps", "1", "--out", str(root / f"run-{n}"), *SMALL, *QUIET]
    argv += ["--task.val_fraction", "0.25", "--task.test_fraction", "0.25"]
    code, err = _run_cli(argv)
    _check(code, err, argv)
    assert (tree_hashes(sibling), hashlib.sha256(path.read_bytes()).hexdigest()) == before
    shutil.rmtree(root / f"run-{n}", ignore_errors=True)
    path.unlink()


FUZZ = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(max_examples=200, **FUZZ)
@given(case=data_files)
def test_any_data_file_is_trained_or_refused_in_one_line(case, tmp_path_factory, tree_hashes):
    _data_case(tree_hashes, tmp_path_factory, *case)


@pytest.mark.slow
@settings(max_examples=1200, **{**FUZZ, "derandomize": False})
@given(case=data_files)
def test_any_data_file_is_trained_or_refused_in_one_line_long(case, tmp_path_factory, tree_hashes):
    _data_case(tree_hashes, tmp_path_factory, *case)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of a real-valued model with 2 input channels."""
    run = tmp_path_factory.mktemp("fuzz-ckpt") / "run"
    argv = ["train", "--model", "gru-small", "--task", "flip-flop", "--seq-len", "6"]
    code, err = _run_cli([*argv, "--steps", "2", "--out", str(run), *SMALL, *QUIET])
    assert code == 0, err
    return run


def _predict_case(
    tree_hashes, trained: Path, tmp_path_factory, suffix: str, data: bytes, out: bool
) -> None:
    root, sibling, n, path = _case_file(tmp_path_factory, "fuzz-predict", "input", suffix, data)
    before = (tree_hashes(sibling), tree_hashes(trained), hashlib.sha256(data).hexdigest())
    argv = ["predict", "--checkpoint", str(trained), "--input", str(path)]
    if out:
        argv += ["--out", str(root / f"preds-{n}.csv")]
    code, err = _run_cli(argv)
    assert code in (0, 2), (argv, code, err)
    _check(code, err, argv)
    after = (
        tree_hashes(sibling),
        tree_hashes(trained),
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert after == before, argv
    (root / f"preds-{n}.csv").unlink(missing_ok=True)
    path.unlink()


@settings(max_examples=40, **FUZZ)
@given(case=data_files, out=st.booleans())
def test_predict_on_any_input_file_answers_or_refuses_in_one_line(
    case, out, trained, tmp_path_factory, tree_hashes
):
    _predict_case(tree_hashes, trained, tmp_path_factory, *case, out)


@pytest.mark.slow
@settings(max_examples=600, **{**FUZZ, "derandomize": False})
@given(case=data_files, out=st.booleans())
def test_predict_on_any_input_file_answers_or_refuses_in_one_line_long(
    case, out, trained, tmp_path_factory, tree_hashes
):
    _predict_case(tree_hashes, trained, tmp_path_factory, *case, out)


# -- tampered run folders ------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
config_values = st.one_of(
    st.sampled_from([0, -1, 1, 3, 100_000, 10**30, 2.5, "4", None, True, [], {}, "bmru"]),
    json_values,
)
TARGETS = [
    "last/model.safetensors",
    "last/model_config.json",
    "last/training.pt",
    "last/manifest.json",
    "best/model_config.json",
    "best/model.safetensors",
    "config.yaml",
    "metrics.csv",
    "run-files.json",
]
CONFIG_FIELDS = ["n_layers", "d_model", "unit", "input_size", "output_size", "head", "arch"]
CONFIG_FIELDS += ["hidden_size", "unit_kwargs", "mlp_ratio", "positional", "conv_kernel"]


@st.composite
def tamperings(draw) -> tuple:
    target = draw(st.sampled_from(TARGETS))
    how = draw(st.sampled_from(["bytes", "bytes", "json", "field", "delete", "link", "nested"]))
    payload = None
    if how == "json":
        payload = json.dumps(draw(json_values))
    elif how == "field":
        payload = (draw(st.sampled_from(CONFIG_FIELDS)), draw(config_values))
    remanifest = draw(st.booleans())
    # Drawing takes a while: only a tampered metrics.csv is plotted.
    commands = ["plot"] if target == "metrics.csv" else ["eval", "resume", "stream"]
    command = draw(st.sampled_from(commands))
    return target, how, payload, remanifest, command, draw(st.data())


def _remanifest(folder: Path) -> None:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name != "manifest.json" and path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            files[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))


def _tamper(run: Path, sibling: Path, target: str, how: str, payload, data) -> None:
    path = run / target
    if how == "delete":
        path.unlink(missing_ok=True)
    elif how == "link":
        path.unlink(missing_ok=True)
        path.symlink_to(sibling / "notes.txt")
    elif how == "nested":
        path.write_text("[" * 50_000 + "]" * 50_000)
    elif how == "json":
        path.write_text(payload)
    elif how == "field":
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            config = {}
        if isinstance(config, dict):
            config[payload[0]] = payload[1]
        path.write_text(json.dumps(config))
    else:
        path.write_bytes(_mutate(data.draw, path.read_bytes()))


def _checkpoint_case(tree_hashes, trained: Path, tmp_path_factory, case: tuple) -> None:
    target, how, payload, remanifest, command, data = case
    root = tmp_path_factory.getbasetemp() / "fuzz-ckpt-cases"
    root.mkdir(exist_ok=True)
    sibling = _sibling(root)
    run = root / f"run-{next(counter)}"
    shutil.copytree(trained, run, symlinks=True)
    _tamper(run, sibling, target, how, payload, data)
    if remanifest and "/" in target:
        _remanifest(run / target.split("/")[0])
    before = tree_hashes(sibling)
    stdin = ""
    if command == "eval":
        argv = ["eval", "--checkpoint", str(run), "--samples", "2"]
    elif command == "resume":
        argv = ["train", "--out", str(run), "--resume", "--steps", "3", *QUIET]
    elif command == "stream":
        argv = ["stream", "--checkpoint", str(run)]
        stdin = "0 1\n1 0\n0 0\n"
    else:
        argv = ["plot", "--run", str(run), "--out", str(run / "c.png")]
    code, err = _run_cli(argv, stdin)
    _check(code, err, argv)
    assert tree_hashes(sibling) == before, argv
    shutil.rmtree(run)


@settings(max_examples=120, **FUZZ)
@given(case=tamperings())
def test_any_tampered_run_folder_is_used_or_refused_in_one_line(
    case, trained, tmp_path_factory, tree_hashes
):
    _checkpoint_case(tree_hashes, trained, tmp_path_factory, case)


@pytest.mark.slow
@settings(max_examples=1200, **{**FUZZ, "derandomize": False})
@given(case=tamperings())
def test_any_tampered_run_folder_is_used_or_refused_in_one_line_long(
    case, trained, tmp_path_factory, tree_hashes
):
    _checkpoint_case(tree_hashes, trained, tmp_path_factory, case)
