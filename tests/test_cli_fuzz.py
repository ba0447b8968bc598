"""Random argument lists for `memrnn train/eval/plot/export`: every one ends with exit status
0, 2 (one line on stderr, no traceback) or 3, and a refused command leaves an existing run
folder exactly as it was."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memrnn.cli import main

SMALL = ["--seq-len", "6", "--batch-size", "2", "--eval-samples", "4", "--model.d_model", "4"]
QUIET = ["--no-progress", "--tensorboard", "false"]
NUMBERS = ["0", "-1", "1", "2", "0.5", "1e-3", "nan", "inf", "-inf", "x", "", "[2, 3]", "{a: 1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    args = ["train", "--model", "gru-small", "--task", "flip-flop", "--steps", "2"]
    assert main([*args, "--out", str(folder), *SMALL, *QUIET]) == 0
    return folder


def _snapshot(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _options(pairs: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A few of the options in `pairs`, each with a drawn value (None: a bare flag)."""
    return st.lists(st.sampled_from(sorted(pairs)), max_size=3, unique=True).flatmap(
        lambda names: st.tuples(*(pairs[n] for n in names)).map(
            lambda values: [
                token
                for name, value in zip(names, values, strict=True)
                for token in ([name] if value is None else [name, value])
            ]
        )
    )


number = st.sampled_from(NUMBERS)
TRAIN = {
    "--model": st.sampled_from(["gru-small", "lru-small", "nope"]),
    "--task": st.sampled_from(["flip-flop", "copy-first-input", "nope"]),
    "--steps": st.sampled_from(["0", "1", "3", "x", "nan"]),
    "--lr": number,
    "--betas": number,
    "--min-lr-ratio": number,
    "--weight-decay": number,
    "--grad-clip": number,
    "--warmup": number,
    "--batch-size": st.sampled_from(["0", "2", "3", "x"]),
    "--seq-len": st.sampled_from(["0", "6", "-2"]),
    "--model.d_model": st.sampled_from(["4", "0", "[1,"]),
    "--resume": st.none(),
    "--overwrite": st.none(),
    "--epsilon-schedule": st.sampled_from(["1,1", "a,b", "-1,2", "1,1,2,0"]),
}
EVAL = {
    "--seq-len": number,
    "--samples": number,
    "--batch-size": number,
    "--split": st.sampled_from(["val", "test", "nope"]),
}
# Drawing a figure takes seconds: plots are given only --out values that are refused.
PLOT = {
    "--states": st.none(),
    "--seq-len": number,
    "--split": st.sampled_from(["val", "oops"]),
}
PLOT_OUT = st.sampled_from(["x.txt", "", "{run}", "{tmp}/p.jpeg"])
EXPORT = {
    "--out": st.sampled_from(["{run}", "x.txt", "", "{tmp}/a/b"]),
    "--onnx": st.sampled_from(["x.txt", "{run}"]),
}

commands = st.one_of(
    st.tuples(
        st.just("train"),
        st.sampled_from(["{run}", "{tmp}/new-{n}", "", "{run}/last/model.safetensors/x"]),
        _options(TRAIN),
    ).map(lambda t: ["train", "--out", t[1], *SMALL, *QUIET, *t[2]]),
    st.tuples(st.sampled_from(["{run}", "{tmp}/none"]), _options(EVAL)).map(
        lambda t: ["eval", "--checkpoint", t[0], *t[1]]
    ),
    st.tuples(st.sampled_from(["--run", "--checkpoint"]), _options(PLOT), PLOT_OUT).map(
        lambda t: ["plot", t[0], "{run}", *t[1], "--out", t[2]]
    ),
    _options(EXPORT).map(lambda o: ["export", "--checkpoint", "{run}", *o]),
)
counter = itertools.count()


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=commands)
def test_any_argument_list_exits_cleanly(argv, run, tmp_path, capsys):
    n = next(counter)
    argv = [
        a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)).replace("{n}", str(n))
        for a in argv
    ]
    before = _snapshot(run)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2, 3), (argv, code, err)
    assert "Traceback" not in err, argv
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("memrnn: error: "), (argv, err)
        # Only a bare `memrnn train` prints its usage lines before the error.
        assert len(lines) == 1 or lines[0].startswith("usage: memrnn train"), (argv, err)
        assert _snapshot(run) == before, argv
