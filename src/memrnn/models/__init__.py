"""Models: residual blocks around any registered unit, networks with task heads, a registry."""

from memrnn.models.block import GLUMLP, Block, build_unit
from memrnn.models.config import ModelConfig
from memrnn.models.network import Network, NetworkState
from memrnn.models.registry import (
    VARIANTS,
    build_model,
    config_for_task,
    create_model,
    create_model_for_task,
    current_epsilon,
    describe_models,
    head_for_task,
    list_models,
    model_config,
    register_model,
    set_epsilon,
)

__all__ = [
    "GLUMLP",
    "VARIANTS",
    "Block",
    "ModelConfig",
    "Network",
    "NetworkState",
    "build_model",
    "build_unit",
    "config_for_task",
    "create_model",
    "create_model_for_task",
    "current_epsilon",
    "describe_models",
    "head_for_task",
    "list_models",
    "model_config",
    "register_model",
    "set_epsilon",
]
