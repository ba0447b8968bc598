"""benchmarks.generation runs end to end on tiny shapes: one row per model, batch and position,
a growing state for full attention only, and its result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from benchmarks import generation


def test_generation_writes_rows_for_every_model_batch_and_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plot is drawn in its own (slow) test: matplotlib takes seconds to import and lay out.
    plotted = []
    monkeypatch.setattr(generation, "plot", lambda rows, path: plotted.append(len(rows)))
    generation.main(
        [
            "--models",
            "gru-small,transformer-small,transformer-window-small",
            "--positions",
            "8,40",
            "--batches",
            "1,3",
            "--repeats",
            "1",
            "--prompt",
            "16",
            "--train-lengths",
            "8",
            "--train-batch",
            "2",
            "--d-model",
            "8",
            "--out-dir",
            str(tmp_path),
        ]
    )
    with open(tmp_path / "generation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2
    size = {(r["model"], r["batch"], r["position"]): int(r["state_bytes"]) for r in rows}
    # A recurrent state and a window keep their size; a full cache grows with the position
    # (5 times the steps here, plus the fixed parts) and with the batch.
    for model in ("gru-small", "transformer-window-small"):
        assert size[(model, "1", "8")] == size[(model, "1", "40")]
    assert size[("transformer-small", "1", "40")] > 4 * size[("transformer-small", "1", "8")]
    assert size[("transformer-small", "3", "40")] == 3 * size[("transformer-small", "1", "40")]
    for r in rows:
        assert float(r["step_ms"]) > 0 and float(r["train_step_s_T8_b2"]) > 0
        assert float(r["ratio_to_first"]) == 1.0 or r["position"] == "40"
    data = json.loads((tmp_path / "generation.json").read_text())
    assert data["machine"]["torch"] and len(data["rows"]) == 12
    assert plotted == [12]


@pytest.mark.slow
def test_generation_plot(tmp_path: Path) -> None:
    rows = [
        {"model": m, "batch": b, "position": p, "step_ms": 1.0 + p / 10, "state_bytes": 8 * p}
        for m in ("a", "b")
        for b in (1, 4)
        for p in (10, 100)
    ]
    assert generation.plot(rows, tmp_path / "g.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--models", "nope-small"], "unknown model"),
        (["--positions", "1k"], "--positions takes comma-separated ints"),
        (["--batches", "0"], "--batches takes positive ints"),
    ],
)
def test_bad_arguments_exit_with_one_line(argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit, match=match):
        generation.main(argv)
