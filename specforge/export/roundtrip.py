"""Read any exported layout back into a specforge draft model (for ``validate``, tests and the bench).

An export is normalised to specforge's own layout (``midlayer.*`` names, aux ids as HF ``hidden_states``
indices) in a temporary directory and loaded through ``AutoEagle3DraftModel.from_pretrained`` - the same
path a training checkpoint takes, so a round trip exercises exactly what the trainer and bench use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from specforge.eagle3.auto import AutoEagle3DraftModel
from specforge.eagle3.config import VLLM_IDS_FIELD, aux_layer_ids
from specforge.export import formats
from specforge.export.source import DraftSource, ExportOptions, load_source


def materialize(source: DraftSource, directory: str | os.PathLike) -> Path:
    """Write ``source`` in specforge's own layout (config.json + model.safetensors) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    formats.write_plan(formats.build_hf(source, None, ExportOptions()), d)
    return d


def build_model(source: DraftSource):
    """Instantiate the draft class named by the config and load ``source``'s tensors strictly.

    Returns an ``Eagle3DraftModel`` on CPU in eval mode (embedding not loaded: call ``load_embedding``).
    Raises :class:`SpecforgeError` when the tensors do not fit the class.
    """
    with tempfile.TemporaryDirectory(prefix="specforge-draft-") as tmp:
        materialize(source, tmp)
        return AutoEagle3DraftModel.from_pretrained(tmp).eval()


def load_draft(directory: str | os.PathLike):
    """Load a draft directory of any layout (checkpoint, hf, sglang, vllm-*) as a specforge model.

    Returns ``(model, aux_layer_ids)``; ``aux_layer_ids`` are HF ``hidden_states`` indices or None for the
    EAGLE-3 defaults ``[2, L//2, L-3]``.
    """
    source = load_source(directory)
    return build_model(source), source.aux_ids


def aux_ids_for(source: DraftSource, num_target_layers: int) -> list[int]:
    """The aux ids a decoder must feed this draft, as HF ``hidden_states`` indices, through the one function
    that decides the layers for every stage (:func:`specforge.eagle3.config.aux_layer_ids`)."""
    cfg = {VLLM_IDS_FIELD: list(source.aux_ids)} if source.aux_ids else None
    return aux_layer_ids(num_target_layers, cfg)
