"""The built-in EAGLE-3 speculative decoder (chain + EAGLE-2 tree drafting, one-pass tree verification).

Public API: :class:`SpeculativeDecoder`, :class:`SpecConfig`, :class:`DecodeStats`, the drafters
(:class:`Eagle3Drafter`, :class:`OracleDrafter`, :class:`RandomDrafter`) and the verification rule
(:func:`verify_tree`, :func:`recursive_rejection`).
"""

from specforge.inference.decoder import DecodeStats, SpecConfig, SpeculativeDecoder
from specforge.inference.drafters import (
    Drafter,
    Eagle3Drafter,
    OracleDrafter,
    RandomDrafter,
)
from specforge.inference.sampling import recursive_rejection, verify_tree
from specforge.inference.tree import (
    DraftTree,
    ancestor_mask,
    select_tree,
    tree_position_ids,
)

__all__ = [
    "DecodeStats", "DraftTree", "Drafter", "Eagle3Drafter", "OracleDrafter", "RandomDrafter", "SpecConfig",
    "SpeculativeDecoder", "ancestor_mask", "recursive_rejection", "select_tree", "tree_position_ids", "verify_tree",
]
