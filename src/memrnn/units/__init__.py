"""Recurrent units: MRUs (BMRU, CMRU), LRU, minGRU, parallel and original LMU, SRC, baselines."""

from memrnn.units.base import (
    NO_WEIGHT_DECAY,
    UNITS,
    RecurrentUnit,
    is_no_weight_decay,
    mark_no_weight_decay,
    register_unit,
)

__all__ = [
    "NO_WEIGHT_DECAY",
    "UNITS",
    "RecurrentUnit",
    "is_no_weight_decay",
    "mark_no_weight_decay",
    "register_unit",
]
