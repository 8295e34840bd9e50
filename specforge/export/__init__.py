"""Export trained EAGLE-3 drafts for SGLang / vLLM / specforge, and validate draft directories.

Public API (``specforge export`` / ``specforge validate`` are thin CLIs over it):

* :func:`export_draft(checkpoint, output_dir, to, target_model_path=None, options=None)` - ``to`` is a key of
  :data:`EXPORTERS` (``sglang``, ``vllm-speculators``, ``vllm-eagle3``, ``hf``); atomic, validated.
* :func:`export_gguf(checkpoint, output, target_model_path, target_gguf=None)` - one llama.cpp EAGLE-3 GGUF
  file; :func:`check_gguf(path)` lists what llama.cpp's loader would reject or misread.
* :func:`validate_directory(directory, target_model_path=None, ...)` -> :class:`Report` of :class:`Check`.
* :func:`check_draft(config, tensors, layout)` - the structural checks on in-memory tensors (meta allowed).
* :func:`load_draft(directory)` -> ``(model, aux_layer_ids)`` from any layout.
"""

from __future__ import annotations

from specforge.export.formats import EXPORTERS, layout_name, register_exporter
from specforge.export.gguf import check_gguf, export_gguf
from specforge.export.report import Check, Report
from specforge.export.roundtrip import load_draft
from specforge.export.source import (
    DraftSource,
    ExportOptions,
    ExportPlan,
    TargetInfo,
    load_source,
    source_from_dict,
    target_info,
)
from specforge.export.validate import check_draft, validate_directory
from specforge.export.write import export_draft

__all__ = [
    "EXPORTERS",
    "Check",
    "DraftSource",
    "ExportOptions",
    "ExportPlan",
    "Report",
    "TargetInfo",
    "check_draft",
    "check_gguf",
    "export_draft",
    "export_gguf",
    "layout_name",
    "load_draft",
    "load_source",
    "register_exporter",
    "source_from_dict",
    "target_info",
    "validate_directory",
]
