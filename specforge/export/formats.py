"""Exporters: a draft (any layout) -> the directory an engine loads. A registry, one builder per layout.

Every builder is a pure function ``(DraftSource, TargetInfo | None, ExportOptions) -> ExportPlan``: it
renames tensors and writes config dicts, never touching tensor data, so it also runs on meta tensors
(the tests export an 8B-shaped draft that way). :func:`export_draft` writes a plan atomically and
validates the written directory before it appears under its final name.

Layouts (docs/EAGLE3.md section 4):

* ``sglang``: ``config.json`` (``architectures: ["LlamaForCausalLMEagle3"]``) + ``model.safetensors`` with
  ``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d`` and no embedding. Custom aux ids go to
  ``eagle_config`` in SGLang's convention *and* to the top-level field in vLLM's, so the same directory is
  also right for vLLM's ``--speculative-config '{"method": "eagle3", "model": DIR}'``.
* ``vllm-eagle3``: that same plain layout (vLLM maps ``midlayer.`` to ``layers.0.`` and adds ``model.``).
* ``vllm-speculators``: the speculators config (``speculators_model_type: "eagle3"``,
  ``transformer_layer_config``, explicit ``norm_before_residual: false``, ``speculators_config`` naming the
  verifier) + tensors named ``layers.0.*`` (speculators' own names), so ``vllm serve DIR`` works.
* ``hf``: specforge's own checkpoint layout without trainer state (ids as in the SGLang layout, which is
  also how training configs store them); ``AutoEagle3DraftModel.from_pretrained`` and ``specforge bench``
  read it directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specforge.eagle3.config import aux_id_fields
from specforge.errors import SpecforgeError
from specforge.export import spec
from specforge.export.source import (  # noqa: F401  (re-exported: the builders' types)
    DraftSource,
    ExportOptions,
    ExportPlan,
    TargetInfo,
    load_source,
    source_from_dict,
    target_info,
)
from specforge.registry import Registry

logger = logging.getLogger(__name__)

# config keys that describe the draft model itself (everything else in a training config is dropped)
_MODEL_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "rms_norm_eps", "vocab_size", "draft_vocab_size", "max_position_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


Builder = Callable[[DraftSource, "TargetInfo | None", ExportOptions], ExportPlan]
REGISTRY: Registry[Builder] = Registry("export layout", "--to")
EXPORTERS = REGISTRY.entries  # name -> builder (kept for callers that read the dict)


def register_exporter(name: str):
    """Decorator: make a builder available as ``specforge export --to``-layout ``name``."""
    return REGISTRY.register(name)


# ----------------------------------------------------------------------------------------------- building

def _float_dtype(src: DraftSource, opts: ExportOptions) -> str:
    if opts.dtype != "keep":
        if opts.dtype not in _DTYPES:
            raise SpecforgeError(f"--dtype {opts.dtype}: use keep, float32, bfloat16 or float16.")
        return _DTYPES[opts.dtype]
    w = src.tensors.get("lm_head.weight")
    return str(w.dtype).replace("torch.", "") if w is not None else "float32"


def _cast(src: DraftSource, dtype: str) -> dict:
    import torch

    td = getattr(torch, dtype)
    return {k: (v.to(td) if v.is_floating_point() else v) for k, v in src.tensors.items()}


def _rope(cfg: dict) -> tuple[float, dict | None, dict]:
    """(rope_theta, legacy rope_scaling, transformers-5 rope_parameters) of a draft config."""
    params = dict(cfg.get("rope_parameters") or {})
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    rtype = params.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or "default"
    scaling = None
    if rtype != "default":
        scaling = {k: v for k, v in (params or cfg.get("rope_scaling") or {}).items() if k != "rope_theta"}
    params = {**(params or {}), "rope_type": rtype, "rope_theta": theta}
    return theta, scaling, params


def _check_ids(ids: list[int] | None, target: TargetInfo | None) -> list[int] | None:
    """Drop default ids (when the target says what default is); range-check custom ones."""
    if ids is None or target is None:
        return ids
    L = target.num_hidden_layers
    if list(ids) == spec.default_aux_ids(L):
        return None
    bad = [i for i in ids if not 1 <= i <= L - 1]
    if bad:
        raise SpecforgeError(f"aux layer ids {ids} out of range for a {L}-layer target (valid 1..{L - 1}); "
                             "was the draft trained for another target?")
    return list(ids)


def model_config(src: DraftSource, dtype: str) -> dict[str, Any]:
    """The HF fields both engines read, written explicitly (nothing left to engine defaults).

    Architecture, ``model_type``, ``hidden_act`` and the layer count come from the draft's own config; the
    EAGLE-3.1 options are written when on (every engine reads an absent one as false, the trained meaning)."""
    dims = spec.draft_dims(src.config)
    theta, scaling, params = _rope(src.config)
    out = {k: src.config[k] for k in _MODEL_KEYS if src.config.get(k) is not None}
    out.update({
        "architectures": [dims.architecture], "model_type": src.config.get("model_type") or "llama",
        "num_hidden_layers": dims.num_hidden_layers, "hidden_act": src.config.get("hidden_act") or "silu",
        "head_dim": dims.head_dim, "num_key_value_heads": dims.num_key_value_heads,
        "draft_vocab_size": dims.draft_vocab_size, "rope_theta": theta, "rope_scaling": scaling,
        "rope_parameters": params, "max_position_embeddings": src.config.get("max_position_embeddings") or 2048,
        # SGLang ties lm_head to embed_tokens when this is true: the trained head would be ignored
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        # vLLM's speculators path defaults this to true; specforge drafts add the residual before hidden_norm
        "norm_before_residual": False, "torch_dtype": dtype,
        **dims.options,
    })
    if dims.target_hidden_size != dims.hidden_size:
        out["target_hidden_size"] = dims.target_hidden_size
    return dict(sorted(out.items()))


def _manifest(layout: str, src: DraftSource, target: TargetInfo | None, ids, dtype: str) -> dict:
    from specforge import __version__

    return {"format": layout, "specforge_version": __version__, "source": src.path, "dtype": dtype,
            "aux_layer_ids": ids, "aux_layer_ids_convention": "HF hidden_states index (input of layer i)",
            "target": None if target is None else {
                "name_or_path": target.name_or_path, "num_hidden_layers": target.num_hidden_layers,
                "hidden_size": target.hidden_size, "vocab_size": target.vocab_size}}


def _plain(layout: str, src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    dtype = _float_dtype(src, opts)
    ids = _check_ids(src.aux_ids, target)
    cfg = model_config(src, dtype)
    if ids is not None:
        cfg.update(aux_id_fields(ids))
    return ExportPlan(layout, cfg, _cast(src, dtype), _manifest(layout, src, target, ids, dtype))


@register_exporter("sglang")
def build_sglang(src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    """SGLang ``LlamaForCausalLMEagle3`` directory (also a valid vLLM plain EAGLE-3 directory)."""
    return _plain("sglang", src, target, opts)


@register_exporter("vllm-eagle3")
def build_vllm_eagle3(src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    """vLLM plain EAGLE-3 directory for ``--speculative-config '{"method":"eagle3","model":DIR}'``."""
    return _plain("vllm-eagle3", src, target, opts)


@register_exporter("vllm-speculators")
def build_vllm_speculators(src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    """speculators-format directory that ``vllm serve DIR`` loads with its verifier."""
    verifier = opts.verifier or (target.name_or_path if target else None)
    if not verifier:
        raise SpecforgeError("the vLLM speculators layout names its verifier: pass --target-model-path "
                             "(or --verifier NAME), or use --vllm-layout eagle3.")
    arch = (src.config.get("architectures") or [spec.ARCH])[0]
    if arch != spec.ARCH:
        raise SpecforgeError(f"the speculators layout describes the Llama EAGLE-3 draft only; {arch} is another "
                             "class: export it with --to sglang or --vllm-layout eagle3 (they keep its name).")
    dtype = _float_dtype(src, opts)
    ids = _check_ids(src.aux_ids, target)
    layer = model_config(src, dtype)
    top = {k: layer.pop(k) for k in spec.SPECULATORS_TOP_FIELDS if k in layer}
    layer["architectures"] = ["LlamaForCausalLM"]
    cfg = {
        "architectures": [spec.SPECULATORS_ARCH], "speculators_model_type": "eagle3",
        "speculators_version": "0.1.0", "torch_dtype": dtype, **top,
        "transformer_layer_config": layer,
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": opts.num_speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": verifier,
                         "architectures": list(target.architectures) if target else []},
        },
    }
    if ids is not None:
        cfg.update(aux_id_fields(ids, sglang=False))  # speculators configs carry vLLM's field only
    tensors = spec.rename_layer(_cast(src, dtype), "midlayer.", spec.layer_prefix("vllm-speculators"))
    return ExportPlan("vllm-speculators", cfg, tensors, _manifest("vllm-speculators", src, target, ids, dtype))


@register_exporter("hf")
def build_hf(src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    """specforge's own layout (a checkpoint minus trainer state; ids fields as in the SGLang layout)."""
    return _plain("hf", src, target, opts)


# ----------------------------------------------------------------------------------------------- writing

def layout_name(to: str, vllm_layout: str = "speculators") -> str:
    """CLI ``--to`` (+ ``--vllm-layout``) -> registry key."""
    if to == "vllm":
        return f"vllm-{vllm_layout}"
    return to


def write_plan(plan: ExportPlan, directory: Path) -> None:
    """Write config.json, model.safetensors and the manifest into an (empty, temporary) directory."""
    from specforge.fileio import save_safetensors

    tensors = {k: v.contiguous() for k, v in plan.tensors.items()}
    save_safetensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n", encoding="utf-8")
    (directory / spec.MANIFEST).write_text(json.dumps(plan.manifest, indent=2) + "\n", encoding="utf-8")
