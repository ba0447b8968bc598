"""Schedules of unit attributes over training steps: ε of the MRU family, surrogate sharpness.

One place parses the schedule strings of a `TrainConfig`, applies them to a model before each
optimisation step and records the values reached into the saved `ModelConfig`, so that a
checkpoint rebuilds the model as it was at that step.

A schedule is a ramp over optimisation steps s = 0, 1, ...:

    value(s) = start                                   s < hold
             = start + (end - start)(s - hold)/decay   hold <= s < hold + decay
             = end                                     s >= hold + decay

written "HOLD,DECAY" (ε: start 1, end 0, the CMRU -> BMRU anneal) or "HOLD,DECAY,START,END".
Applying sets the public attribute (`unit.epsilon`, `unit.sharpness`) of every unit that has
it; the units validate the value themselves.

Example:
    >>> ramp = parse_ramp("epsilon_schedule", "100,50")
    >>> assert ramp(0) == 1.0 and ramp(125) == 0.5 and ramp(10_000) == 0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from memrnn.models.config import ModelConfig

# TrainConfig key -> (unit attribute, default start, default end); None: START,END required.
SCHEDULED = {
    "epsilon_schedule": ("epsilon", 1.0, 0.0),
    "sharpness_schedule": ("sharpness", None, None),
}


@dataclass(frozen=True)
class Ramp:
    """Hold `start` for `hold` steps, go linearly to `end` over `decay` steps, then hold."""

    hold: int
    decay: int
    start: float
    end: float

    def __call__(self, step: int) -> float:
        if step < self.hold:
            return self.start
        if step >= self.hold + self.decay:
            return self.end
        return self.start + (self.end - self.start) * (step - self.hold) / self.decay


def parse_ramp(key: str, text: Any) -> Ramp:
    """The ramp of TrainConfig key `key` ("HOLD,DECAY[,START,END]"); ValueError naming `key`."""
    attribute, start, end = SCHEDULED[key]
    form = "'HOLD,DECAY,START,END'"
    if start is not None:
        form = "'HOLD,DECAY' or " + form
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) == 2 and start is not None:
            hold, decay = (int(p) for p in parts)
        elif len(parts) == 4:
            hold, decay = int(parts[0]), int(parts[1])
            start, end = float(parts[2]), float(parts[3])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{key} must be {form} (step counts, then {attribute} values; e.g. 500,1000"
            f"{'' if SCHEDULED[key][1] is not None else ',1,4'}); got {text!r}"
        ) from None
    if hold < 0 or decay < 0:
        raise ValueError(f"{key} step counts must be >= 0; got {text!r}")
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"{key} values must be finite numbers; got {text!r}")
    if attribute == "epsilon" and not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"{key} values must be in [0, 1] (ε); got {text!r}")
    if attribute == "sharpness" and not (start > 0 and end > 0):
        raise ValueError(f"{key} values must be > 0 (surrogate sharpness); got {text!r}")
    return Ramp(hold, decay, start, end)


def scheduled_units(model: nn.Module, attribute: str) -> list[nn.Module]:
    """The recurrent units inside `model` (itself included) that have `attribute`."""
    from memrnn.units.base import RecurrentUnit

    return [m for m in model.modules() if isinstance(m, RecurrentUnit) and hasattr(m, attribute)]


class UnitSchedules:
    """The attribute ramps of one training run (possibly none).

    Args:
        ramps: unit attribute ("epsilon", "sharpness") -> its Ramp.
    """

    def __init__(self, ramps: dict[str, Ramp] | None = None) -> None:
        self.ramps = dict(ramps or {})

    @classmethod
    def from_config(cls, config: Any) -> UnitSchedules:
        """The schedules set in a TrainConfig (ValueError naming a malformed key)."""
        ramps = {}
        for key, (attribute, _, _) in SCHEDULED.items():
            text = getattr(config, key, None)
            if text:
                ramps[attribute] = parse_ramp(key, text)
        return cls(ramps)

    def __bool__(self) -> bool:
        return bool(self.ramps)

    def check(self, model: nn.Module) -> None:
        """ValueError when a schedule targets an attribute no unit of `model` has."""
        for attribute in self.ramps:
            if not scheduled_units(model, attribute):
                raise ValueError(
                    f"{attribute} is scheduled but the model has no unit with `{attribute}` "
                    "(ε and sharpness belong to the MRU family: bmru, cmru, hybrids)"
                )

    def apply(self, model: nn.Module, step: int) -> dict[str, float]:
        """Sets each scheduled attribute on every unit of `model` for optimisation step
        `step` (0-based); returns the values set."""
        values = {}
        for attribute, ramp in self.ramps.items():
            value = ramp(step)
            for unit in scheduled_units(model, attribute):
                setattr(unit, attribute, value)
            values[attribute] = value
        return values

    def record(self, model: nn.Module, config: ModelConfig) -> ModelConfig:
        """`config` with the scheduled values the units of `model` hold now, so that
        `build_model` of the result rebuilds them (ε in `epsilon`, others per unit name in
        `layer_unit_kwargs`)."""
        changes: dict[str, Any] = {}
        for attribute in self.ramps:
            units = scheduled_units(model, attribute)
            if not units:
                continue
            if attribute == "epsilon":
                changes["epsilon"] = float(units[0].epsilon)
                continue
            per_name = {k: dict(v) for k, v in config.layer_unit_kwargs.items()}
            for unit in units:
                name = getattr(unit, "registry_name", "") or ""
                if name:
                    per_name.setdefault(name, {})[attribute] = float(getattr(unit, attribute))
            changes["layer_unit_kwargs"] = per_name
        return config.replace(**changes) if changes else config


__all__ = ["SCHEDULED", "Ramp", "UnitSchedules", "parse_ramp", "scheduled_units"]
