from collections import Counter

import pytest

from memrnn.train.logging import MetricsLogger, read_metrics


def test_csv_rows_and_resume_drops_later_rows(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, "train", 0.5, {"loss": 0.5, "accuracy": 0.25}, 1e-3, 0.1)
    log.log(2, "train", 0.4, {"loss": 0.4, "accuracy": 0.5, "epsilon": 1.0}, 1e-3, 0.2)
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == ["1", "2"] and rows[1]["epsilon"] == "1"
    MetricsLogger(tmp_path, resume_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == ["1"]


def test_tensorboard_writes_each_scalar_once_per_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path, tensorboard=True)
    assert log.writer is not None
    for step in (1, 2, 3):
        log.log(step, "train", 1.0 / step, {"loss": 1.0 / step, "accuracy": 0.1 * step}, 1e-3, 0.0)
    log.log(3, "val", 0.7, {"loss": 0.7, "accuracy": 0.6}, 1e-3, 0.0)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"train/loss", "train/accuracy", "train/lr", "val/loss", "val/accuracy"}
    for tag in tags:
        counts = Counter(e.step for e in events.Scalars(tag))
        assert all(n == 1 for n in counts.values()), (tag, counts)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx([0.6])
