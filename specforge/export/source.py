"""A draft of any layout, read and normalised to specforge's own (``DraftSource``), and the other value types
an export passes around (target facts, user options, the plan of what is written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError
from specforge.export import spec


@dataclass
class DraftSource:
    """A draft normalised to specforge's layout: flat config, ``midlayer.*`` tensors, ids in our convention."""

    config: dict[str, Any]
    tensors: dict[str, Any]  # name -> torch.Tensor (may live on the meta device)
    aux_ids: list[int] | None  # HF hidden_states indices; None = EAGLE-3 defaults
    path: str = ""
    dropped: list[str] = field(default_factory=list)  # names removed while normalising (embedding)


@dataclass(frozen=True)
class TargetInfo:
    """What an export needs to know about the target (verifier) model."""

    name_or_path: str
    architectures: tuple[str, ...]
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None = None


@dataclass(frozen=True)
class ExportOptions:
    """User options of an export: float dtype (``keep`` = as trained), verifier name, draft depth."""

    dtype: str = "keep"
    verifier: str | None = None
    num_speculative_tokens: int = 3


@dataclass
class ExportPlan:
    """Everything one export writes: ``config.json`` content, tensors, and the manifest."""

    layout: str
    config: dict[str, Any]
    tensors: dict[str, Any]
    manifest: dict[str, Any]


def source_from_dict(config: dict, tensors: dict, layout: str = "checkpoint", path: str = "") -> DraftSource:
    """Normalise an in-memory draft (config + tensors of ``layout``) to a :class:`DraftSource`."""
    flat = spec.flatten_config(config, layout)
    ids = spec.specforge_aux_ids(config, layout)
    tensors = spec.rename_layer(tensors, spec.layer_prefix(layout), "midlayer.")
    if spec.LAYOUT_INFO[layout].loose_names:  # accept recent-SGLang style names in unknown dirs
        tensors = spec.rename_layer(tensors, "layers.0.", "midlayer.")
    dropped = [k for k in tensors if k in spec.EMBED_KEYS]
    tensors = {k: v for k, v in tensors.items() if k not in spec.EMBED_KEYS}
    if flat.get("norm_before_residual"):
        raise SpecforgeError(f"{path or 'draft'}: config says norm_before_residual=true, but specforge drafts "
                             "add the residual before hidden_norm; this is not a specforge-trained draft.")
    return DraftSource(flat, tensors, ids, path, dropped)


def load_source(directory: str | os.PathLike) -> DraftSource:
    """Read a draft directory of any layout (training checkpoint or an export) into a DraftSource."""
    d = Path(directory)
    if not d.is_dir():
        raise SpecforgeError(f"--checkpoint {d}: not a directory; pass an epoch_<i>/ dir or an export.")
    cfg = spec.read_json(d / "config.json")
    spec.check_is_draft(d, cfg)
    layout = spec.detect_layout(d, cfg)
    return source_from_dict(cfg, spec.read_tensors(d), layout, str(d))


def target_info(name_or_path: str) -> TargetInfo:
    """Read the target's config (no weights) through specforge's one model loader."""
    from specforge.modeling.loading import canonical_name, load_config

    cfg = load_config(name_or_path)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    name = str(Path(name_or_path).resolve()) if os.path.isdir(name_or_path) else canonical_name(name_or_path)
    return TargetInfo(name, tuple(getattr(cfg, "architectures", None) or ()), int(cfg.num_hidden_layers),
                      int(cfg.hidden_size), int(cfg.vocab_size), getattr(cfg, "max_position_embeddings", None))
