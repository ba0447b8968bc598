"""The documentation site builds without a warning (broken links, missing pages, docstrings)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_python_examples_of_the_guides_run(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    for page in ("getting-started.md", "scan.md", "own-model.md", "own-data.md"):
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert blocks, page
        # Names the streaming example leaves to the reader.
        namespace = {"prompt": torch.randn(2, 7, 16), "live_inputs": [torch.randn(2, 16)]}
        for block in blocks:
            exec(compile(block, page, "exec"), namespace)


def _needs_mkdocs() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)


# Pages that docstrings link to: they must keep these paths.
PAGES = [
    "scan.md",
    "units/mru.md",
    "units/lru.md",
    "units/mingru.md",
    "units/lmu.md",
    "units/src.md",
    "units/brc.md",
    "training.md",
    "own-data.md",
    "own-model.md",
    "cli.md",
    "patents.md",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _needs_mkdocs()
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_strict_build_has_every_page(site):
    for page in PAGES:
        assert (site / page.replace(".md", ".html")).is_file(), page
    assert (site / "results" / "benchmarks" / "units.png").is_file()
    benchmarks = (site / "results" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "speedup_vs_loop" in benchmarks  # the tables of the committed CSV files


def test_cli_reference_is_generated_from_the_parsers(site):
    from memrnn.cli import build_parser
    from memrnn.train.config import TrainConfig

    html = (site / "cli.html").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"memrnn {name}" in html
        for action in p._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert flag in html, (name, flag)
    for field in TrainConfig.__dataclass_fields__:
        if field not in ("model_overrides", "task_kwargs"):
            assert "--" + field.replace("_", "-") in html, field
    assert "<!-- memrnn-cli -->" not in html


def test_written_pages_never_cite_outside_files(site):
    # The pages written for the site (the API reference shows the docstrings as they are).
    for page in site.rglob("*.html"):
        if "api" in page.relative_to(site).parts:
            continue
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"SPEC(\.md)?\b", text), page


def _modules_with_examples() -> list[str]:
    import pkgutil

    import memrnn

    names = [m.name for m in pkgutil.walk_packages(memrnn.__path__, "memrnn.")]
    # Triton kernels need triton (an optional extra); __main__ runs the command line.
    return sorted(n for n in names if "triton" not in n and not n.endswith("__main__"))


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    """Every `>>>` example in the library's docstrings runs and prints what it shows. An example
    may use, without importing them, torch, numpy as np, Path, tempfile and the names of
    `memrnn`, `memrnn.models` and `memrnn.units`."""
    import doctest
    import importlib
    import tempfile

    import numpy as np
    import torch

    import memrnn
    import memrnn.models
    import memrnn.units

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    extra = {"torch": torch, "np": np, "Path": Path, "tempfile": tempfile}
    for package in (memrnn, memrnn.models, memrnn.units):
        extra.update({k: getattr(package, k) for k in getattr(package, "__all__", [])})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, name):
        test.globs = {**extra, **test.globs}
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {name} failed"
