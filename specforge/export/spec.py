"""How a draft directory is read: layouts, layer-name prefixes, config flattening, files.

The tensors a draft must hold come from the model itself (:func:`expected_tensors`, built on the meta
device by :mod:`specforge.eagle3.state`); the EAGLE-3 facts (architecture names, default aux ids and the
engines' id conventions) from :mod:`specforge.eagle3.config`. Layouts and conventions: docs/EAGLE3.md
section 4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specforge.eagle3.config import (  # noqa: F401  (re-exported: the exporters' vocabulary)
    ARCH,
    OPTION_FIELDS,
    SPECULATORS_ARCH,
    Eagle3Config,
    aux_ids_from_config,
    default_aux_ids,
    from_sglang_ids,
    to_sglang_ids,
)
from specforge.eagle3.state import TensorSpec, checkpoint_tensors
from specforge.errors import SpecforgeError

MANIFEST = "specforge_export.json"
# layouts: specforge's own (checkpoint / --to hf), SGLang + vLLM plain EAGLE-3 (same file set), speculators


@dataclass(frozen=True)
class Layout:
    """How one directory layout names and configures a draft (a registry entry: no branching on names).

    ``layer_prefix``: name of the first decoder layer's tensors; ``speculators``: the config nests the layer in
    ``transformer_layer_config`` and carries only vLLM's aux-id field; ``engine``: the serving engine it is for
    (None = specforge's own); ``loose_names``: a directory of unknown origin, recent-SGLang ``layers.0.``
    names accepted."""

    layer_prefix: str = "midlayer."
    speculators: bool = False
    engine: str | None = None
    loose_names: bool = False


LAYOUT_INFO: dict[str, Layout] = {
    "checkpoint": Layout(loose_names=True),
    "hf": Layout(loose_names=True),
    "sglang": Layout(engine="sglang"),
    "vllm-eagle3": Layout(engine="vllm"),
    "vllm-speculators": Layout("layers.0.", speculators=True, engine="vllm"),
    "eagle3": Layout(loose_names=True),
}
LAYOUTS = tuple(LAYOUT_INFO)

#: fields a speculators config holds at its top level, outside ``transformer_layer_config``
SPECULATORS_TOP_FIELDS = ("draft_vocab_size", "target_hidden_size", "norm_before_residual", *OPTION_FIELDS)
EMBED_KEYS = ("embed_tokens.weight", "model.embed_tokens.weight")


def layer_prefix(layout: str) -> str:
    """Name prefix of the decoder layer's tensors in a layout (speculators names it ``layers.0.``)."""
    return LAYOUT_INFO[layout].layer_prefix


def draft_dims(flat: dict[str, Any], speculators: bool = False) -> Eagle3Config:
    """The typed sizes of a flat draft config; raises :class:`SpecforgeError` naming the first bad field."""
    return Eagle3Config.from_dict(flat, "config.json", speculators)


def expected_tensors(flat: dict[str, Any], prefix: str = "midlayer.") -> dict[str, TensorSpec]:
    """Every tensor a complete draft must hold: ``name -> (shape, kind)``, kind ``float|int64|bool``.

    Derived from the draft class the config names (:func:`specforge.eagle3.state.checkpoint_tensors`), with
    the first decoder layer named ``prefix`` (the layout's)."""
    cfg = dict(flat)
    if not cfg.get("architectures") or cfg["architectures"][0] in (SPECULATORS_ARCH, "LlamaForCausalLM"):
        cfg["architectures"] = [ARCH]
    return rename_layer(checkpoint_tensors(cfg), "midlayer.", prefix)


def rename_layer(state: dict, src_prefix: str, dst_prefix: str) -> dict:
    """Rename decoder-layer tensors ``src_prefix*`` -> ``dst_prefix*`` (others unchanged, order kept)."""
    if src_prefix == dst_prefix:
        return dict(state)
    return {(dst_prefix + k[len(src_prefix):] if k.startswith(src_prefix) else k): v for k, v in state.items()}


def read_json(path: Path) -> dict:
    """Load a JSON object file with a one-line error on failure."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecforgeError(f"{path}: not found; is this a draft checkpoint/export directory?") from None
    except UnicodeDecodeError as e:
        from specforge.fileio import not_utf8

        raise not_utf8(path, e) from None
    except (OSError, json.JSONDecodeError) as e:
        raise SpecforgeError(f"{path}: unreadable JSON ({e}); re-export the draft.") from None
    if not isinstance(data, dict):
        raise SpecforgeError(f"{path}: expected a JSON object; re-export the draft.")
    return data


def detect_layout(directory: Path, cfg: dict) -> str:
    """Which layout a draft directory is in (manifest first, then the config's shape)."""
    man = directory / MANIFEST
    if man.is_file():
        fmt = read_json(man).get("format")
        if fmt in LAYOUTS:
            return fmt
    if cfg.get("speculators_model_type") is not None or "transformer_layer_config" in cfg:
        return "vllm-speculators"
    if (directory / "trainer_state").is_dir():
        return "checkpoint"
    return "eagle3"


def flatten_config(cfg: dict, layout: str) -> dict:
    """The draft's model fields as one flat dict (speculators nests them in ``transformer_layer_config``)."""
    if not LAYOUT_INFO[layout].speculators:
        return dict(cfg)
    flat = dict(cfg.get("transformer_layer_config") or {})
    flat["architectures"] = [ARCH]  # the layer config names the verifier's class; the draft is the EAGLE-3 one
    for k in SPECULATORS_TOP_FIELDS:
        if cfg.get(k) is not None:
            flat[k] = cfg[k]
    return flat


def specforge_aux_ids(cfg: dict, layout: str) -> list[int] | None:
    """The aux layer ids of a draft config as HF ``hidden_states`` indices (None = defaults); see
    :func:`specforge.eagle3.config.aux_ids_from_config`."""
    return aux_ids_from_config(cfg, speculators=LAYOUT_INFO[layout].speculators)


def weight_files(directory: Path) -> list[Path]:
    """The ``*.safetensors`` files of a draft dir (sorted)."""
    return sorted(Path(directory).glob("*.safetensors"))


def check_is_draft(directory: Path, cfg: dict) -> None:
    """Refuse a target model's directory passed where a draft belongs (say so, instead of a shape error)."""
    archs = cfg.get("architectures") or []
    layers = cfg.get("num_hidden_layers")
    if not archs or archs[0] in (ARCH, SPECULATORS_ARCH) or "speculators_model_type" in cfg \
            or "Eagle" in str(archs[0]) or not (isinstance(layers, int) and layers > 1):
        return
    raise SpecforgeError(f"{directory}: is a target model ({archs[0]}, {layers} layers), not an EAGLE-3 draft; "
                         "pass a draft checkpoint (OUTPUT_DIR/epoch_<i>) or an export, and give the target "
                         "with --target-model-path / --model-path.")


def read_tensors(directory: Path) -> dict:
    """All tensors of a draft dir (safetensors only, never pickle); duplicate names are an error."""
    from specforge.fileio import load_safetensors

    files = weight_files(directory)
    if not files:
        raise SpecforgeError(f"{directory}: no *.safetensors weights; re-export or re-train the checkpoint.")
    out: dict = {}
    for f in files:
        for k, v in load_safetensors(f).items():
            if k in out:
                raise SpecforgeError(f"{directory}: tensor '{k}' appears in two weight files; keep one.")
            out[k] = v
    return out
