"""Target backends: the TP interface, the HF backend and the aux-layer choice."""

from .base import DistributedTargetModel, aux_layer_ids
from .hf_target import Eagle3TargetOutput, HFEagle3TargetModel

__all__ = ["DistributedTargetModel", "Eagle3TargetOutput", "HFEagle3TargetModel", "aux_layer_ids"]
