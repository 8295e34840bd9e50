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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from specforge.errors import SpecforgeError
from specforge.export import spec

logger = logging.getLogger(__name__)

# config keys that describe the draft model itself (everything else in a training config is dropped)
_MODEL_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "rms_norm_eps", "vocab_size", "draft_vocab_size", "max_position_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


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


EXPORTERS: dict[str, Callable[[DraftSource, "TargetInfo | None", ExportOptions], ExportPlan]] = {}


def register_exporter(name: str):
    """Decorator: make a builder available as ``specforge export --to``-layout ``name``."""

    def deco(fn):
        EXPORTERS[name] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- reading

def source_from_dict(config: dict, tensors: dict, layout: str = "checkpoint", path: str = "") -> DraftSource:
    """Normalise an in-memory draft (config + tensors of ``layout``) to a :class:`DraftSource`."""
    flat = spec.flatten_config(config, layout)
    ids = spec.specforge_aux_ids(config, layout)
    tensors = spec.rename_layer(tensors, spec.layer_prefix(layout), "midlayer.")
    if layout in ("eagle3", "checkpoint", "hf"):  # accept recent-SGLang style names in unknown dirs
        tensors = spec.rename_layer(tensors, "layers.0.", "midlayer.")
    dropped = [k for k in tensors if k in spec.EMBED_KEYS]
    tensors = {k: v for k, v in tensors.items() if k not in spec.EMBED_KEYS}
    if flat.get("norm_before_residual"):
        raise SpecforgeError(f"{path or 'draft'}: config says norm_before_residual=true, but specforge drafts "
                             "add the residual before hidden_norm; this is not a specforge-trained draft.")
    layers = flat.get("num_hidden_layers", 1)
    if layers not in (None, 1):
        raise SpecforgeError(f"{path or 'draft'}: num_hidden_layers={layers}; only one-layer EAGLE-3 drafts "
                             "can be exported. Fix num_hidden_layers in the draft config.")
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
    """The HF Llama fields both engines read, written explicitly (nothing left to engine defaults)."""
    dims = spec.DraftDims.from_config(src.config)
    theta, scaling, params = _rope(src.config)
    out = {k: src.config[k] for k in _MODEL_KEYS if src.config.get(k) is not None}
    out.update({
        "architectures": [spec.ARCH], "model_type": "llama", "num_hidden_layers": 1, "hidden_act": "silu",
        "head_dim": dims.head_dim, "num_key_value_heads": dims.num_kv_heads,
        "draft_vocab_size": dims.draft_vocab_size, "rope_theta": theta, "rope_scaling": scaling,
        "rope_parameters": params, "max_position_embeddings": src.config.get("max_position_embeddings") or 2048,
        # SGLang ties lm_head to embed_tokens when this is true: the trained head would be ignored
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        # vLLM's speculators path defaults this to true; specforge drafts add the residual before hidden_norm
        "norm_before_residual": False, "torch_dtype": dtype,
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
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": spec.to_sglang_ids(ids),
                               "use_aux_hidden_state": True}
        cfg["eagle_aux_hidden_state_layer_ids"] = list(ids)  # vLLM reads this first, "input of layer i"
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
    dtype = _float_dtype(src, opts)
    ids = _check_ids(src.aux_ids, target)
    layer = model_config(src, dtype)
    top = {k: layer.pop(k) for k in ("draft_vocab_size", "target_hidden_size", "norm_before_residual")
           if k in layer}
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
        cfg["eagle_aux_hidden_state_layer_ids"] = list(ids)  # vLLM convention == specforge's
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
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in plan.tensors.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n", encoding="utf-8")
    (directory / spec.MANIFEST).write_text(json.dumps(plan.manifest, indent=2) + "\n", encoding="utf-8")


def _guard_output(out: Path, src_dir: Path | None, force: bool) -> None:
    out_r = out.resolve()
    if src_dir is not None:
        s = src_dir.resolve()
        if out_r == s or s.is_relative_to(out_r):
            raise SpecforgeError(f"--output-dir {out} would replace the checkpoint it reads; pick another dir.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / spec.MANIFEST).is_file() \
            and not force:
        raise SpecforgeError(f"--output-dir {out} exists and is not a specforge export; choose a new "
                             "directory (or pass --force to replace it).")


def export_draft(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, to: str = "sglang",
                 target_model_path: str | None = None, options: ExportOptions | None = None,
                 force: bool = False):
    """Export ``checkpoint`` as layout ``to`` (a key of :data:`EXPORTERS`) into ``output_dir``.

    The directory appears atomically and only after the structural validation passed; returns the
    :class:`specforge.export.validate.Report` of the written directory.
    """
    from specforge.export.validate import validate_directory
    from specforge.fileio import atomic_path

    if to not in EXPORTERS:
        raise SpecforgeError(f"unknown export layout '{to}'; choose one of {', '.join(sorted(EXPORTERS))}.")
    if to == "gguf":
        raise SpecforgeError("the gguf layout is one file, not a directory: use specforge.export.export_gguf "
                             "(`specforge export --to gguf --output FILE.gguf`).")
    out = Path(output_dir)
    _guard_output(out, Path(checkpoint), force)
    src = load_source(checkpoint)
    if src.dropped:
        logger.info("not exporting %s: the engines share the target's embedding", ", ".join(src.dropped))
    target = target_info(target_model_path) if target_model_path else None
    plan = EXPORTERS[to](src, target, options or ExportOptions())
    with atomic_path(out, is_dir=True) as tmp:
        write_plan(plan, tmp)
        report = validate_directory(tmp, layout=to, decode=False, target=target)
        if not report.ok:
            bad = report.failures()[0]
            raise SpecforgeError(f"export refused: {bad.name}: {bad.detail} ({bad.fix})")
    report.directory = str(out)
    return report
