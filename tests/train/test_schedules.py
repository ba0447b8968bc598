"""The ε/sharpness schedules: parsed once, applied to unit attributes, recorded in the config."""

from __future__ import annotations

import pytest

from memrnn.models import build_model, model_config
from memrnn.train import UsageError, resolve_config
from memrnn.train.schedules import Ramp, UnitSchedules, parse_ramp, scheduled_units


def test_ramp_holds_decays_and_holds() -> None:
    ramp = parse_ramp("epsilon_schedule", "100,50")
    assert ramp == Ramp(100, 50, 1.0, 0.0)
    assert [ramp(s) for s in (0, 99, 100, 125, 150, 10_000)] == [1, 1, 1, 0.5, 0, 0]
    assert parse_ramp("sharpness_schedule", "0,10,1,5")(5) == pytest.approx(3.0)
    assert parse_ramp("epsilon_schedule", "2,0,0.5,0.5")(7) == 0.5


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("epsilon_schedule", "500", "must be 'HOLD,DECAY' or 'HOLD,DECAY,START,END'"),
        ("epsilon_schedule", "a,b", "must be 'HOLD,DECAY'"),
        ("epsilon_schedule", "-1,5", "step counts must be >= 0"),
        ("epsilon_schedule", "1,1,2,0", r"must be in \[0, 1\]"),
        ("sharpness_schedule", "1,1", "must be 'HOLD,DECAY,START,END'"),
        ("sharpness_schedule", "1,1,0,4", "must be > 0"),
        ("sharpness_schedule", "1,1,nan,4", "must be finite"),
    ],
)
def test_malformed_schedules_are_refused(key: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ramp(key, text)
    with pytest.raises(UsageError, match=message):
        resolve_config(overrides={key: text})


def test_apply_sets_the_public_attributes_and_record_keeps_them() -> None:
    config = model_config("cmru-small", 2, 3, d_model=8)
    model = build_model(config)
    schedules = UnitSchedules.from_config(
        resolve_config(overrides={"epsilon_schedule": "2,4", "sharpness_schedule": "0,4,1,3"})
    )
    schedules.check(model)
    values = schedules.apply(model, 4)
    assert values == {"epsilon": 0.5, "sharpness": 3.0}
    units = scheduled_units(model, "epsilon")
    assert units and all(u.epsilon == 0.5 and u.sharpness == 3.0 for u in units)
    saved = schedules.record(model, config)
    assert saved.epsilon == 0.5
    assert saved.layer_unit_kwargs["cmru"]["sharpness"] == 3.0
    rebuilt = build_model(saved)
    assert all(u.epsilon == 0.5 and u.sharpness == 3.0 for u in scheduled_units(rebuilt, "epsilon"))


def test_a_schedule_for_a_model_without_such_units_is_refused(tmp_path) -> None:
    model = build_model(model_config("gru-small", 2, 3, d_model=8))
    schedules = UnitSchedules.from_config(resolve_config(overrides={"epsilon_schedule": "1,1"}))
    with pytest.raises(ValueError, match="epsilon is scheduled but the model has no unit"):
        schedules.check(model)


def test_no_schedules_is_falsy_and_records_nothing() -> None:
    config = model_config("gru-small", 2, 3, d_model=8)
    schedules = UnitSchedules.from_config(resolve_config())
    assert not schedules and schedules.record(build_model(config), config) is config
