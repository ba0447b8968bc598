"""The documentation site builds without a warning (broken links, missing pages, docstrings)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
    from memrnn.cli_help import NOT_SHOWN

    for field in TrainConfig.__dataclass_fields__:
        if field not in NOT_SHOWN:
            assert "--" + field.replace("_", "-") in html, field
    assert "<!-- memrnn-cli -->" not in html


def test_cli_reference_shows_real_defaults_and_hides_internal_flags(site):
    from memrnn.cli import build_parser
    from memrnn.cli_help import train_option_groups

    html = (site / "cli.html").read_text(encoding="utf-8")
    # Internal flags are accepted but not shown.
    assert "debug-nan-at-step" not in html
    # `memrnn train` without --model and --task exits 2: they are required, not defaulted.
    groups = {g.title: g for g in train_option_groups()}
    (model,) = [o for o in groups["model"].options if o.flag == "--model"]
    (task,) = [o for o in groups["task"].options if o.flag == "--task"]
    assert model.default == task.default == "required"
    assert "bmru-small</code></td>" not in html
    for group in groups.values():
        for option in group.options:
            assert option.description.strip(), option.flag
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help" or action.help == "==SUPPRESS==":
                continue
            if action.option_strings:
                assert (action.help or "").strip(), (name, action.option_strings)
                assert (
                    action.default is None
                    or action.default is False
                    or (f"default: {action.default}" in action.help or "default" in action.help)
                ), (name, action.option_strings)


def test_train_help_lists_every_option_by_group():
    import contextlib
    import io

    from memrnn.cli import main
    from memrnn.cli_help import train_option_groups

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--help"]) == 0
    text = out.getvalue()
    for title in ("model options:", "task options:", "training options:"):
        assert title in text
    for group in train_option_groups():
        for option in group.options:
            assert option.flag.split(" / ")[0] in text, option.flag
    assert "--debug-nan-at-step" not in text


def test_closed_pipe_exits_quietly():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        f"'{sys.executable}' -m memrnn list | head -n 1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "models:"
    assert result.stderr == "", result.stderr


def test_pages_load_nothing_from_the_network(site):
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", text):
            assert (
                not re.search(r"(?:src|href)=\"(?:https?:)?//", tag) or 'rel="canonical' in tag
            ), (
                page,
                tag,
            )
        assert "fonts.googleapis" not in text, page
    index = (site / "index.html").read_text(encoding="utf-8")
    # The worker stand-in loads before the theme's bundle, and the index is bundled as a script.
    assert index.index("javascripts/iframe-worker.js") < index.index("assets/javascripts/bundle")
    bundled = (site / "search" / "search_index.js").read_text(encoding="utf-8")
    assert bundled.startswith("var __index =") and "BMRU" in bundled


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.parametrize("shim", [True, False], ids=["with-worker-stand-in", "without"])
def test_search_works_opened_from_disk(site, tmp_path, shim):
    """A headless browser opens the built site from disk with ?q=BMRU and finds results; the
    same page without the worker stand-in finds none (what the stand-in is for)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium) to open the site from disk")
    root = site
    if not shim:
        root = tmp_path / "site"
        shutil.copytree(site, root)
        page = root / "index.html"
        text = page.read_text(encoding="utf-8")
        page.write_text(re.sub(r'<script src="javascripts/iframe-worker.js"></script>', "", text))
    result = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (root / "index.html").as_uri() + "?q=BMRU",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'md-search-result__meta">(\d+) matching document', result.stdout)
    if shim:
        assert found and int(found[1]) > 0, result.stdout[-1500:]
    else:
        assert not found


def test_experiment_pages_keep_prose_and_precision(site):
    page = (site / "results" / "flip-flop-horizon" / "index.html").read_text(encoding="utf-8")
    # The sentence of results.md that says what the table shows is kept.
    assert "persistent memory keeps its accuracy" in page
    # The LSTM's mean 0.99998 is printed as such, not rounded to 1.
    assert "0.999975" in page and "4.3e-05" not in page


def test_benchmark_page_is_curated_and_links_the_raw_files(site):
    folder = site / "results" / "benchmarks"
    page = (folder / "index.html").read_text(encoding="utf-8")
    for name in ("units", "scan", "memory"):
        assert f'href="{name}.csv"' in page, name
        assert (folder / f"{name}.csv").is_file()
    assert "-dirty" not in page and "cuda None" not in page


def test_every_unit_page_starts_with_an_example():
    for page in sorted((ROOT / "docs" / "units").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        first_section = text.split("\n## ", 1)[0]
        assert "```python" in first_section, page.name


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
