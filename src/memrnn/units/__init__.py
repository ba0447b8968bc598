"""Recurrent units: MRUs (BMRU, CMRU, αCMRU), LRU, minGRU, parallel and original LMU, SRC,
baselines and a causal Transformer."""

from memrnn.units.acmru import AlphaCMRU
from memrnn.units.base import (
    NO_WEIGHT_DECAY,
    UNITS,
    RecurrentUnit,
    is_no_weight_decay,
    mark_no_weight_decay,
    register_unit,
)
from memrnn.units.brc import BRC, NBRC, BRCState
from memrnn.units.classic import GRU, LSTM, GRUState, LSTMState
from memrnn.units.hybrid import Hybrid, HybridState, alternating
from memrnn.units.lmu import (
    LMU,
    LMUCell,
    LMUCellState,
    LMUState,
    ParallelLMU,
    legendre_system,
    lmu_decode,
)
from memrnn.units.lru import LRU, LRUState
from memrnn.units.mingru import MinGRU, MinGRUState
from memrnn.units.mru import BMRU, CMRU, BMRUState, bmru_scan, write_rate_penalty
from memrnn.units.src import SRC, SRCState, spike_stats
from memrnn.units.transformer import Transformer, TransformerState

__all__ = [
    "LMU",
    "LMUCell",
    "LMUCellState",
    "LMUState",
    "ParallelLMU",
    "legendre_system",
    "lmu_decode",
    "Hybrid",
    "HybridState",
    "alternating",
    "AlphaCMRU",
    "BMRU",
    "CMRU",
    "BMRUState",
    "bmru_scan",
    "write_rate_penalty",
    "BRC",
    "GRU",
    "LRU",
    "LSTM",
    "NBRC",
    "BRCState",
    "GRUState",
    "LRUState",
    "LSTMState",
    "MinGRU",
    "MinGRUState",
    "NO_WEIGHT_DECAY",
    "UNITS",
    "RecurrentUnit",
    "SRC",
    "SRCState",
    "is_no_weight_decay",
    "mark_no_weight_decay",
    "register_unit",
    "spike_stats",
    "Transformer",
    "TransformerState",
]
