"""Small shims over transformers API renames, so one code path works across the versions pyproject allows."""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _cache_kwarg_for(forward_cls: Any) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    # transformers >= 5.2x renamed the KV-cache argument `past_key_values` -> `cache` (the old name warns).
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """``{name: cache}`` with the KV-cache keyword the installed transformers expects for ``model.forward``."""
    forward_cls: Any = type(model)
    return {_cache_kwarg_for(forward_cls): cache}
