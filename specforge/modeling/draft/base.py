"""The seed's path of the draft base class; it lives in :mod:`specforge.eagle3.base`."""

from specforge.eagle3.base import Eagle3DraftModel, KVCache

__all__ = ["Eagle3DraftModel", "KVCache"]
