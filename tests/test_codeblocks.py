"""Every fenced `python` and `bash` block of README.md and docs/ runs.

The blocks of one page run in order, in a temporary folder, sharing one namespace (Python) and
one folder (shell), as a reader pasting them one after another would. A block that needs a GPU,
a download or a long run is marked on the line before its fence with

    <!-- codeblock: skip (the reason) -->

and counted as skipped. So that the default test run stays short, shell lines run with capped
lengths: `memrnn train` with at most MAX_STEPS steps and a small evaluation, `memrnn eval` on a
few sequences; a plain `memrnn ...` line runs in this process (no interpreter start-up), any
other line in bash with the environment's `memrnn` first on PATH. The slow test
`test_pages_run_verbatim` runs each page as written: its python blocks in one namespace and
its shell blocks whole in bash, in order and in one folder, so that a file a python block
writes is there for the shell block after it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_STEPS = 3
SKIP = re.compile(r"<!--\s*codeblock:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*$")
# Shell syntax that a line run in this process would not honour.
SHELL_SYNTAX = re.compile(r"[|<>;&$`*]|\bcd\b")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None


def pages() -> list[Path]:
    found = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in found if p.is_file()]


def blocks_of(path: Path) -> list[Block]:
    """The fenced python and bash blocks of a Markdown file, with their skip markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match["indent"], match["lang"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.search(previous)
        if lang in ("python", "bash"):
            name = str(path.relative_to(ROOT))
            code = "\n".join(body) + "\n"
            out.append(Block(name, i + 1, lang, code, marker["reason"] if marker else None))
        i = end + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks_of(p)]


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out


def capped(command: str) -> str:
    """`command` with the lengths of memrnn runs capped for the default test run."""

    words = command.split()
    # A resumed run goes on past the capped length of the run it continues.
    cap = 2 * MAX_STEPS if "--resume" in words else MAX_STEPS

    def steps(match: re.Match) -> str:
        return f"--steps {min(int(match[1]), cap)}"

    command = re.sub(r"--steps[ =](\d+)", steps, command)
    if words[:2] == ["memrnn", "train"] and "--resume" not in words:
        if "--eval-samples" not in command:
            command += " --eval-samples 16"
        command += " --no-tensorboard --no-progress"
    if words[:2] == ["memrnn", "eval"] and "--samples" not in command:
        command += " --samples 16"
    return command


def run_shell_line(command: str, folder: Path, env: dict[str, str]) -> tuple[int, str]:
    from memrnn.cli import main

    code_part = command.split(" #")[0].strip()
    if code_part.startswith("memrnn ") and not SHELL_SYNTAX.search(code_part):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(shlex.split(code_part)[1:])
        return rc, out.getvalue()
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def shell_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    path = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}


def python_namespace() -> dict:
    import torch

    # Names that the streaming examples leave to the reader.
    return {"prompt": torch.randn(2, 7, 16), "live_inputs": [torch.randn(2, 16)]}


PAGES = [str(p.relative_to(ROOT)) for p in pages() if blocks_of(p)]


def run_page(page: str, folder: Path, monkeypatch: pytest.MonkeyPatch, verbatim: bool) -> None:
    """Runs the unmarked blocks of `page` in order in `folder`: shell lines capped and plain
    `memrnn` lines in this process, or (`verbatim`) every shell block as written in bash."""
    blocks = [b for b in blocks_of(ROOT / page) if b.skip is None]
    if not blocks:
        pytest.skip(f"every block of {page} is marked skip")
    from memrnn.runtime import get_threads, set_threads

    monkeypatch.chdir(folder)
    namespace = python_namespace()
    env = shell_env()
    # One thread: these runs are tiny, and on a busy machine threads waiting for each other
    # cost more than they bring.
    before = get_threads()["torch"]
    set_threads(1)
    try:
        _run_blocks(blocks, folder, namespace, env, verbatim)
    finally:
        set_threads(before)


def _run_blocks(blocks: list[Block], folder: Path, namespace: dict, env: dict, verbatim: bool):
    for block in blocks:
        where = f"{block.page}:{block.line}"
        if block.lang == "python":
            exec(compile(block.code, where, "exec"), namespace)
        elif verbatim:
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block.code],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            assert result.returncode == 0, f"{where}:\n{result.stderr[-2000:]}"
        else:
            for command in shell_commands(block.code):
                rc, output = run_shell_line(capped(command), folder, env)
                assert rc == 0, f"{where}: `{capped(command)}` exited {rc}:\n{output[-2000:]}"


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, verbatim=False)


def test_blocks_are_counted_and_skips_give_a_reason(capsys):
    blocks = all_blocks()
    skipped = [b for b in blocks if b.skip is not None]
    assert blocks and len(skipped) < len(blocks) / 3, "most blocks must run"
    for block in skipped:
        assert block.skip.strip(), f"{block.page}:{block.line}: a skip marker needs a reason"
    with capsys.disabled():
        print(
            f"\ncode blocks of README.md and docs/: {len(blocks) - len(skipped)} executed, "
            f"{len(skipped)} skipped ("
            + "; ".join(f"{b.page}:{b.line} {b.skip}" for b in skipped)
            + ")"
        )


def test_collector_finds_fences_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- codeblock: skip (needs a GPU) -->\n"
        "```bash\nmemrnn train --steps 400 \\\n    --out runs/x  # a run\n```\n\n"
        "- item\n\n    ```text\n    not code\n    ```\n",
        encoding="utf-8",
    )
    found = [(b.lang, b.skip) for b in _blocks_outside_root(page)]
    assert found == [("python", None), ("bash", "needs a GPU")]
    (bash,) = [b for b in _blocks_outside_root(page) if b.lang == "bash"]
    assert shell_commands(bash.code) == ["memrnn train --steps 400 --out runs/x  # a run"]
    assert capped("memrnn train --steps 400 --out runs/x").startswith(
        f"memrnn train --steps {MAX_STEPS} --out runs/x --eval-samples 16"
    )
    assert capped("memrnn train --out runs/x --resume --steps 9") == (
        f"memrnn train --out runs/x --resume --steps {2 * MAX_STEPS}"
    )


def test_verbatim_run_takes_python_and_bash_blocks_in_order_in_one_folder(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nopen('made.txt', 'w').write('from python')\n```\n\n"
        "```bash\ngrep -q 'from python' made.txt\necho ' then bash' >> made.txt\n```\n\n"
        "```python\nassert open('made.txt').read() == 'from python then bash\\n'\n```\n",
        encoding="utf-8",
    )
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        _run_blocks(_blocks_outside_root(page), folder, {}, shell_env(), verbatim=True)
    assert (folder / "made.txt").read_text() == "from python then bash\n"


def _blocks_outside_root(path: Path) -> list[Block]:
    global ROOT
    saved = ROOT
    ROOT = path.parent
    try:
        return blocks_of(path)
    finally:
        ROOT = saved


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_pages_run_verbatim(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, verbatim=True)
