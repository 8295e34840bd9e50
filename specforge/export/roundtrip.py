"""Read any exported layout back into a specforge draft model (for ``validate``, tests and the bench).

An export is normalised to specforge's own layout (``midlayer.*`` names, aux ids as HF ``hidden_states``
indices) in a temporary directory and loaded through ``AutoEagle3DraftModel.from_pretrained`` - the same
path a training checkpoint takes, so a round trip exercises exactly what the trainer and bench use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from specforge.export import formats, spec


def materialize(source: "formats.DraftSource", directory: str | os.PathLike) -> Path:
    """Write ``source`` in specforge's own layout (config.json + model.safetensors) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    formats.write_plan(formats.build_hf(source, None, formats.ExportOptions()), d)
    return d


def build_model(source: "formats.DraftSource"):
    """Instantiate the draft class named by the config and load ``source``'s tensors strictly.

    Returns an ``Eagle3DraftModel`` on CPU in eval mode (embedding not loaded: call ``load_embedding``).
    Raises :class:`SpecforgeError` when the tensors do not fit the class, ImportError when the model
    package is unavailable.
    """
    try:
        from specforge.modeling.auto import AutoEagle3DraftModel
    except ImportError:  # the auto registry is optional for this path: fall back to the one known class
        AutoEagle3DraftModel = None
    with tempfile.TemporaryDirectory(prefix="specforge-draft-") as tmp:
        materialize(source, tmp)
        if AutoEagle3DraftModel is not None:
            return AutoEagle3DraftModel.from_pretrained(tmp).eval()
        import json

        from safetensors.torch import load_file
        from transformers import LlamaConfig

        from specforge.modeling.draft import LlamaForCausalLMEagle3

        cfg = json.loads((Path(tmp) / "config.json").read_text(encoding="utf-8"))
        model = LlamaForCausalLMEagle3(LlamaConfig(**cfg))
        model.load_checkpoint_state(load_file(str(Path(tmp) / "model.safetensors")), source.path or "draft")
    return model.eval()


def load_draft(directory: str | os.PathLike):
    """Load a draft directory of any layout (checkpoint, hf, sglang, vllm-*) as a specforge model.

    Returns ``(model, aux_layer_ids)``; ``aux_layer_ids`` are HF ``hidden_states`` indices or None for the
    EAGLE-3 defaults ``[2, L//2, L-3]``.
    """
    source = formats.load_source(directory)
    return build_model(source), source.aux_ids


def aux_ids_for(source: "formats.DraftSource", num_target_layers: int) -> list[int]:
    """The aux ids a decoder must feed this draft, as HF ``hidden_states`` indices.

    Goes through the trainer's own ``specforge.modeling.target.aux_layer_ids`` (the one function that
    decides the layers for every stage) so decoding uses exactly the states the draft was trained on.
    """
    try:
        from specforge.modeling.target import aux_layer_ids
    except ImportError:  # pragma: no cover - target package absent
        return list(source.aux_ids) if source.aux_ids else spec.default_aux_ids(num_target_layers)
    # source.aux_ids are HF hidden_states indices: the top-level (vLLM, "input of layer i") field
    cfg = {"eagle_aux_hidden_state_layer_ids": list(source.aux_ids)} if source.aux_ids else None
    return aux_layer_ids(num_target_layers, cfg)
