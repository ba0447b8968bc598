"""The package as a user installs it: `python -m build` makes an sdist and a wheel (the wheel
built from the sdist, so the sdist is complete), and the wheel, installed into a fresh virtual
environment outside the source tree, imports, lists its models and trains.

The fresh environment sees the dependencies already installed here (PyTorch and the rest)
through a .pth file instead of downloading them again; memrnn itself comes only from the
wheel. Slow (a build, a new environment and three interpreter start-ups): `make test-slow`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the setuptools installed here, without a download.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], out)
    return out


def test_sdist_and_wheel_hold_the_package_and_its_license(dist):
    (sdist,) = dist.glob("memrnn-*.tar.gz")
    (wheel,) = dist.glob("memrnn-*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for needed in ("LICENSE", "README.md", "pyproject.toml", "src/memrnn/cli.py"):
        assert any(n.endswith(needed) for n in names), needed
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    assert "memrnn/cli.py" in names and "memrnn/units/mru.py" in names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    assert any("dist-info" in n and n.endswith("LICENSE") for n in names)


def test_wheel_installs_and_runs_outside_the_source_tree(dist, tmp_path):
    (wheel,) = dist.glob("memrnn-*.whl")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).stdout.strip()
    )
    # The dependencies installed here, after the new environment's own packages on sys.path.
    (purelib / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        tmp_path,
    )
    found = _run(
        [str(python), "-c", "import memrnn, memrnn.units; print(memrnn.__file__)"], tmp_path
    ).stdout.strip()
    assert Path(found).is_relative_to(env_dir), found
    memrnn = str(env_dir / "bin" / "memrnn")
    listed = _run([memrnn, "list"], tmp_path).stdout
    assert "bmru-small" in listed and "flip-flop" in listed
    trained = _run(
        [
            memrnn,
            "train",
            "--model",
            "gru-small",
            "--task",
            "flip-flop",
            "--steps",
            "2",
            "--model.d_model",
            "8",
            "--eval-samples",
            "8",
            "--out",
            "run",
            "--no-tensorboard",
            "--no-progress",
        ],
        tmp_path,
    ).stdout
    assert "step 2:" in trained
    assert (tmp_path / "run" / "config.yaml").is_file()
