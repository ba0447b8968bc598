"""The benchmark command lines run end to end on tiny shapes and write their result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from benchmarks import brc, inference, memory, units
from benchmarks.__main__ import BENCHMARKS
from benchmarks.__main__ import main as bench_main


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_units_writes_csv_json_and_plot(tmp_path: Path) -> None:
    units.main(
        [
            "--units",
            "bmru,gru",
            "--lengths",
            "16,32",
            "--batch",
            "1",
            "--width",
            "4",
            "--repeats",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    rows = _rows(tmp_path / "units.csv")
    assert {(r["unit"], r["T"]) for r in rows} == {
        ("bmru", "16"),
        ("bmru", "32"),
        ("gru", "16"),
        ("gru", "32"),
    }
    bmru = next(r for r in rows if r["unit"] == "bmru")
    assert bmru["check"] == "ok" and float(bmru["speedup"]) > 0
    gru = next(r for r in rows if r["unit"] == "gru")
    assert gru["impl"] == "torch.nn.GRU" and gru["parallel_s"] == "" and float(gru["recurrent_s"])
    data = json.loads((tmp_path / "units.json").read_text())
    assert data["machine"]["torch"] and len(data["rows"]) == 4
    assert (tmp_path / "units.png").stat().st_size > 0


def test_units_refuses_speedup_when_modes_disagree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        units, "_equivalent", lambda name, width: (False, "parallel and recurrent disagree")
    )
    rows = units.run(["bmru"], [16], 2, 8, 1, 16, 2.0, tmp_path, result_name="u")
    assert rows[0]["parallel_s"] and rows[0]["recurrent_s"]
    assert rows[0]["speedup"] is None and rows[0]["gru_over_unit"] is None


def test_units_caps_recurrent_length(tmp_path: Path) -> None:
    rows = units.run(["lru", "gru"], [8, 32], 1, 4, 1, 8, 2.0, tmp_path, result_name="u")
    lru = {r["T"]: r for r in rows if r["unit"] == "lru"}
    assert lru[8]["recurrent_s"] and lru[32]["recurrent_s"] is None and lru[32]["parallel_s"]
    # The fused torch.nn.GRU is timed at every length.
    assert all(r["recurrent_s"] for r in rows if r["unit"] == "gru")


def test_inference_reports_latency_per_position(tmp_path: Path) -> None:
    inference.main(
        [
            "--units",
            "bmru,lstm",
            "--batches",
            "1,2",
            "--width",
            "8",
            "--positions",
            "0,30",
            "--window",
            "5",
            "--out-dir",
            str(tmp_path),
        ]
    )
    rows = _rows(tmp_path / "inference.csv")
    assert len(rows) == 2 * 2 * 2
    assert all(float(r["us_per_step"]) > 0 and float(r["late_over_early"]) > 0 for r in rows)
    assert (tmp_path / "inference.json").is_file() and (tmp_path / "inference.png").is_file()


def test_memory_measures_in_a_subprocess(tmp_path: Path) -> None:
    memory.main(
        [
            "--units",
            "bmru",
            "--lengths",
            "64",
            "--batch",
            "1",
            "--width",
            "8",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ]
    )
    (row,) = _rows(tmp_path / "memory.csv")
    assert row["unit"] == "bmru" and row["mode"] == "parallel" and not row.get("error")
    assert float(row["peak_mb"]) >= float(row["baseline_mb"]) > 0
    assert (tmp_path / "memory.json").is_file()


def test_memory_skips_long_python_loop_recurrence(tmp_path: Path) -> None:
    rows = memory.run(["brc"], [64], 1, 4, "cpu", 32, tmp_path, "m")
    assert rows[0]["mode"] == "recurrent" and "skipped" in rows[0]["note"]


def test_dispatcher_runs_a_benchmark_and_rejects_unknown_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        bench_main(
            [
                "inference",
                "--units",
                "mingru",
                "--batches",
                "1",
                "--width",
                "4",
                "--positions",
                "0,10",
                "--window",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "inference.csv").is_file()
    assert bench_main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert bench_main(["all", "--fast"]) == 2
    assert bench_main(["--list"]) == 0
    assert set(BENCHMARKS) >= {"units", "scan", "lmu", "src", "peers", "inference", "memory"}


def test_units_times_the_two_modes_in_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(units, "_train_step", lambda unit, x: seen.append(unit.mode))
    unit = units._build("cmru", 4, 4, units.torch.float32)
    _, _, reps = units._time_both(unit, units.torch.zeros(1, 3, 4), 3, slow_seconds=60.0)
    # Warm-up, then 3 turns: each mode steps twice in a row, the second step is the timed one.
    assert reps == 3 and seen == ["parallel", "parallel", "recurrent", "recurrent"] * 4


def test_units_times_one_repetition_when_a_warm_step_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The decision reads the second warm-up step: a first step that compiles kernels is not it.
    steps: list[str] = []

    def step(unit: units.torch.nn.Module, x: object) -> None:
        steps.append(unit.mode)
        units.time.sleep(0.05 if len(steps) == 1 else 0.0)

    monkeypatch.setattr(units, "_train_step", step)
    unit = units._build("cmru", 4, 4, units.torch.float32)
    assert units._time_both(unit, units.torch.zeros(1, 3, 4), 3, slow_seconds=0.04)[2] == 3
    steps.clear()
    monkeypatch.setattr(
        units, "_time_once", lambda u, x: (1.0 if u.mode == "recurrent" else 0.0, 1)
    )
    assert units._time_both(unit, units.torch.zeros(1, 3, 4), 3, slow_seconds=0.5)[2] == 1


def test_brc_times_both_backends_and_refuses_when_they_disagree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    brc.main(["--quick", "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "brc_quick.csv")
    assert {(r["cell"], r["pass"], r["path"]) for r in rows} == {
        (cell, p, path)
        for cell in ("brc", "nbrc")
        for p in ("train", "inference")
        for path in ("numba", "naive")
    }
    assert all(float(r["seconds"]) > 0 and float(r["speedup_vs_loop"]) > 0 for r in rows)
    assert brc.check_agreement("nbrc") < 1e-9
    monkeypatch.setattr(brc, "check_agreement", lambda name: 1e-3)
    with pytest.raises(SystemExit, match="disagree"):
        brc.main(["--quick", "--out-dir", str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()


def test_gpu_benchmark_refuses_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import gpu

    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("benchmarks.gpu: needs a CUDA device, got --device cpu")
    assert len(err.splitlines()) == 1


def test_gpu_benchmark_reads_bandwidth_by_gpu_name() -> None:
    from benchmarks.gpu import datasheet_bandwidth

    assert datasheet_bandwidth("NVIDIA H100 80GB HBM3") == 3350e9
    assert datasheet_bandwidth("NVIDIA H100 PCIe") == 2000e9
    assert datasheet_bandwidth("NVIDIA H200") == 4800e9
    assert datasheet_bandwidth("Some Future GPU") is None


@pytest.mark.slow
def test_gpu_benchmark_rows_run_through_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # The timing code on tiny shapes, the kernels in Triton's interpreter on CPU: every row is
    # checked equal to the torch path; the times themselves mean nothing here.
    pytest.importorskip("triton")
    from benchmarks import gpu

    monkeypatch.setattr(gpu, "SCAN_SHAPES", ((1, 64, 8),))
    monkeypatch.setattr(gpu, "UNIT_SHAPE", (1, 16, 8))
    cpu = torch.device("cpu")
    rows = gpu.scan_rows(cpu, 1, {"datasheet": None, "copy": 1e9})
    rows += gpu.unit_rows(cpu, 1)
    ours = [row for row in rows if row["impl"].startswith("memrnn")]
    assert [row["impl"] for row in ours][1:] == [
        "memrnn bmru",
        "memrnn cmru",
        "memrnn mingru",
        "memrnn lru",
    ]
    assert all(row["agrees"] for row in ours)
    assert rows[0]["x_floor_copy"] > 0 and rows[0]["x_floor_datasheet"] is None
