"""GGUF export for llama.cpp's EAGLE-3 speculative decoding (``--spec-type draft-eagle3 -md FILE.gguf``).

The layout follows llama.cpp's own converter (``LlamaModel`` with ``is_eagle3``) and loader
(``llama_model_eagle3``): architecture ``eagle3``; one block; the *target's* tokenizer (llama.cpp checks
that draft and target vocabularies match and sizes the d2t scatter by it); no token embedding (the
target's is used), so the draft hidden size must equal the target's embedding width. Tensors::

    fc.weight                 [H, n_aux*Ht]  the aux-state projection
    blk.0.attn_norm.weight    [H]            input_layernorm (on the token embedding)
    blk.0.attn_norm_2.weight  [H]            hidden_norm (on the fused target state)
    blk.0.attn_{q,k,v}.weight [.., 2H]       q/k rows permuted for llama.cpp's (GPT-J style) RoPE
    blk.0.attn_output.weight, blk.0.ffn_{norm,gate,up,down}.weight, output_norm.weight
    output.weight             [Vd, H]        lm_head over the draft vocab
    d2t                       int64 [Vd]     ABSOLUTE target ids (specforge stores offsets: id = i + d2t[i])

``t2d`` is not written (llama.cpp scatters draft logits with d2t). Metadata: the usual Llama hparams under
``eagle3.*`` plus the captured target layers in the *input-of-layer* convention (HF ``hidden_states``
index, the one specforge uses internally), ``eagle3.target_hidden_size`` and
``eagle3.norm_before_residual`` (false for specforge drafts). The layers go under both names llama.cpp
has used: ``eagle3.target_layers`` (what the loader in the ``xllamacpp`` wheel reads) and
``eagle3.extract_layers`` (what the upstream converter writes); a loader ignores keys it does not know.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError
from specforge.export import spec
from specforge.export.formats import _rope, register_exporter
from specforge.export.gguf_header import read_header, read_tensor_int64
from specforge.export.source import (
    DraftSource,
    ExportOptions,
    ExportPlan,
    TargetInfo,
    load_source,
)

logger = logging.getLogger(__name__)

ARCH = "eagle3"
LAYER_KEYS = (f"{ARCH}.target_layers", f"{ARCH}.extract_layers")
# specforge name -> GGUF name (llama.cpp's tensor names for the eagle3 architecture)
TENSOR_NAMES = {
    "fc.weight": "fc.weight",
    "midlayer.input_layernorm.weight": "blk.0.attn_norm.weight",
    "midlayer.hidden_norm.weight": "blk.0.attn_norm_2.weight",
    "midlayer.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "midlayer.self_attn.k_proj.weight": "blk.0.attn_k.weight",
    "midlayer.self_attn.v_proj.weight": "blk.0.attn_v.weight",
    "midlayer.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "midlayer.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "midlayer.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
    "midlayer.mlp.up_proj.weight": "blk.0.ffn_up.weight",
    "midlayer.mlp.down_proj.weight": "blk.0.ffn_down.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "d2t": "d2t",
}
# Config fields of later EAGLE variants ("EAGLE-3.1": normed aux states before fc, normed hidden fed
# forward, normed residual) that llama.cpp's EAGLE-3 graph for specforge drafts does not apply: a
# draft using them would load and then mispredict silently.
UNSUPPORTED_FIELDS = {
    "norm_before_fc": "normalises each aux state before fc",
    "fc_norm": "normalises each aux state before fc",
    "norm_output": "feeds the post-norm hidden state forward",
    "norm_before_residual": "adds the normed hidden state as the residual",
    "use_fc_norm": "normalises each aux state before fc",
}
_FLOAT_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
GGML_F32, GGML_I64 = 0, 27  # ggml type ids
GGML_FLOAT = {"F32": 0, "F16": 1, "BF16": 30}


def permute_rope(w, n_head: int):
    """HF (rotate-half) q/k rows -> llama.cpp's interleaved RoPE layout, as its converter does.

    ``w [n_head*hd, in]``: within each head the rows ``[0..hd/2)`` and ``[hd/2..hd)`` are interleaved.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def refuse_unsupported(src: DraftSource) -> None:
    """Raise a one-line :class:`SpecforgeError` for a draft llama.cpp's EAGLE-3 loader cannot run as trained."""
    cfg = src.config
    for key, what in UNSUPPORTED_FIELDS.items():
        if cfg.get(key):
            raise SpecforgeError(f"{src.path or 'draft'}: config sets {key}={cfg[key]!r} (EAGLE-3.1: {what}); "
                                 "llama.cpp's EAGLE-3 loader does not read it, so the draft would run without it "
                                 "and mispredict. Export it for SGLang/vLLM instead.")
    if (cfg.get("num_hidden_layers") or 1) != 1:
        raise SpecforgeError(f"{src.path or 'draft'}: num_hidden_layers={cfg['num_hidden_layers']}; llama.cpp's "
                             "EAGLE-3 graph has one block. Export it for vLLM (or a recent SGLang) instead.")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise SpecforgeError(f"{src.path or 'draft'}: attention/MLP biases are set; llama.cpp's EAGLE-3 graph has "
                             "no bias tensors, so they would be dropped. Train without biases.")
    if src.aux_ids is not None and len(src.aux_ids) != 3:
        raise SpecforgeError(f"{src.path or 'draft'}: {len(src.aux_ids)} aux layers {src.aux_ids}; llama.cpp's "
                             "EAGLE-3 requires exactly 3.")
    _, scaling, _ = _rope(cfg)
    if scaling:
        raise SpecforgeError(f"{src.path or 'draft'}: rope scaling {scaling.get('rope_type')} is not exported to "
                             "GGUF by specforge yet; train the draft with default RoPE.")
    known = set(TENSOR_NAMES) | {"t2d"}
    extra = sorted(k for k in src.tensors if k not in known)
    if extra:
        raise SpecforgeError(f"{src.path or 'draft'}: tensor '{extra[0]}' has no place in llama.cpp's EAGLE-3 "
                             "layout (a later EAGLE variant?); it would be dropped, so the export is refused.")


def expected_layout(dims: spec.Eagle3Config, n_aux: int = 3) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor llama.cpp's loader requires: ``gguf name -> (numpy shape, kind)``, kind float|norm|int64.

    numpy shapes are torch's (GGUF stores them reversed as ``ne``; llama.cpp's ``{in, out}`` is our ``[out, in]``).
    """
    ours = spec.expected_tensors(dims.to_dict())
    out = {}
    for name, gg in TENSOR_NAMES.items():
        shape, kind = ours[name]
        if name == "fc.weight":
            shape = (dims.hidden_size, n_aux * dims.target_hidden_size)
        out[gg] = (tuple(shape), "int64" if kind == "int64" else ("norm" if len(shape) == 1 else "float"))
    return out


def expected_keys(target_layers: list[int]) -> dict[str, Any]:
    """The ``eagle3.*`` keys whose value the export fixes regardless of the draft's sizes."""
    keys: dict[str, Any] = {"general.architecture": ARCH, f"{ARCH}.block_count": 1,
                            f"{ARCH}.norm_before_residual": False}
    for k in LAYER_KEYS:
        keys[k] = list(target_layers)
    return keys


def _float_type(src: DraftSource, opts: ExportOptions) -> str:
    if opts.dtype == "keep":
        w = src.tensors.get("lm_head.weight")
        name = str(getattr(w, "dtype", "torch.float32")).replace("torch.", "")
        return _FLOAT_TYPES.get(name, "F32")
    alias = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(opts.dtype, opts.dtype)
    if alias not in _FLOAT_TYPES:
        raise SpecforgeError(f"--dtype {opts.dtype}: use keep, float32, float16 or bfloat16.")
    return _FLOAT_TYPES[alias]


@register_exporter("gguf")
def build_gguf(src: DraftSource, target: TargetInfo | None, opts: ExportOptions) -> ExportPlan:
    """GGUF plan: ``config`` = GGUF metadata (``key -> value``), ``tensors`` = GGUF-named torch tensors."""
    import torch

    if target is None:
        raise SpecforgeError("--to gguf needs the target (--target-model-path): its layer count, hidden size and "
                             "tokenizer go into the GGUF file.")
    refuse_unsupported(src)
    dims = spec.draft_dims(src.config)
    if dims.hidden_size != target.hidden_size:
        raise SpecforgeError(f"draft hidden_size {dims.hidden_size} != target hidden size {target.hidden_size}: "
                             "llama.cpp feeds the target's token embedding into the draft, so they must match.")
    if dims.vocab_size != target.vocab_size:
        raise SpecforgeError(f"draft vocab_size {dims.vocab_size} != target vocab {target.vocab_size}; was the "
                             "draft trained for another target?")
    missing = [k for k in TENSOR_NAMES if k not in src.tensors]
    if missing:
        raise SpecforgeError(f"{src.path or 'draft'}: tensor '{missing[0]}' missing; re-export from the training "
                             "checkpoint.")
    layers = list(src.aux_ids) if src.aux_ids else spec.default_aux_ids(target.num_hidden_layers)
    bad = [i for i in layers if not 1 <= i <= target.num_hidden_layers - 1]
    if bad:
        raise SpecforgeError(f"aux layer ids {layers} out of range for a {target.num_hidden_layers}-layer target.")
    ftype = _float_type(src, opts)
    tdtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[ftype]
    tensors = {}
    for name, gg in TENSOR_NAMES.items():
        t = src.tensors[name]
        if name == "d2t":
            t = t.to(torch.int64) + torch.arange(t.shape[0], dtype=torch.int64, device=t.device)
        elif t.dim() == 1:
            t = t.to(torch.float32)  # norms stay F32, as llama.cpp's converter keeps 1-D tensors
        else:
            if name.endswith("q_proj.weight"):
                t = permute_rope(t, dims.num_attention_heads)
            elif name.endswith("k_proj.weight"):
                t = permute_rope(t, dims.num_key_value_heads)
            t = t.to(tdtype)
        tensors[gg] = t
    theta, _, _ = _rope(src.config)
    a = ARCH
    meta: dict[str, Any] = {
        **expected_keys(layers),
        "general.name": Path(src.path).name if src.path else "specforge-eagle3",
        "general.type": "model",
        "general.file_type": {"F32": 0, "F16": 1, "BF16": 32}[ftype],
        f"{a}.context_length": int(src.config.get("max_position_embeddings") or target.max_position_embeddings
                                   or 2048),
        f"{a}.embedding_length": dims.hidden_size,
        f"{a}.feed_forward_length": dims.intermediate_size,
        f"{a}.attention.head_count": dims.num_attention_heads,
        f"{a}.attention.head_count_kv": dims.num_key_value_heads,
        f"{a}.attention.key_length": dims.head_dim,
        f"{a}.attention.value_length": dims.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": float(src.config.get("rms_norm_eps") or 1e-6),
        f"{a}.rope.freq_base": theta,
        f"{a}.rope.dimension_count": dims.head_dim,
        f"{a}.vocab_size": dims.vocab_size,
        f"{a}.target_hidden_size": dims.target_hidden_size,
    }
    manifest = {"format": "gguf", "target_layers": layers, "float_type": ftype, "source": src.path,
                "target": target.name_or_path}
    return ExportPlan("gguf", meta, tensors, manifest)


# ------------------------------------------------------------------------------------------------ target

def target_gguf_path(target_model_path: str | None, target_gguf: str | None = None) -> Path:
    """The target's GGUF file: ``target_gguf``, a ``.gguf`` target path, or the offline default's file."""
    from specforge.modeling.loading import OFFLINE_MODELS, canonical_name

    if target_gguf:
        p = Path(target_gguf)
        if not p.is_file():
            raise SpecforgeError(f"--target-gguf {p}: no such file.")
        return p
    if target_model_path and str(target_model_path).endswith(".gguf"):
        p = Path(target_model_path)
        if not p.is_file():
            raise SpecforgeError(f"target GGUF {p}: no such file.")
        return p
    name = canonical_name(str(target_model_path or ""))
    if name in OFFLINE_MODELS:
        files = OFFLINE_MODELS[name].gguf_files()
        if len(files) == 1:
            return files[0]
    raise SpecforgeError(f"llama.cpp needs the target as a GGUF file and none is known for "
                         f"'{target_model_path}': convert it with llama.cpp's convert_hf_to_gguf.py and pass "
                         "--target-gguf FILE.gguf (or a .gguf path as the target).")


def target_info_from_gguf(path: str | os.PathLike) -> TargetInfo:
    """Layer count, hidden size and vocab of a target GGUF (header only, no tensor data is read)."""
    h = read_header(path)
    arch = h.get("general.architecture")
    layers, hidden = h.get(f"{arch}.block_count"), h.get(f"{arch}.embedding_length")
    tokens = h.get("tokenizer.ggml.tokens")
    vocab = h.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if not (arch and layers and hidden and vocab):
        raise SpecforgeError(f"{path}: GGUF lacks {arch}.block_count / embedding_length / a vocabulary; is it a "
                             "language model converted by llama.cpp?")
    if not tokens:
        raise SpecforgeError(f"{path}: GGUF has no tokenizer; the draft GGUF copies the target's vocabulary.")
    return TargetInfo(str(path), (str(arch),), int(layers), int(hidden), int(vocab), h.get(f"{arch}.context_length"))


# ------------------------------------------------------------------------------------------------ writing

def _add(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)  # python ints -> INT32, as llama.cpp's converter writes layer lists
    else:  # pragma: no cover - the builder writes only these types
        raise TypeError(f"{key}: unsupported metadata type {type(value).__name__}")


def write_gguf(plan: ExportPlan, path: Path, vocab_gguf: Path) -> None:
    """Write the plan as one GGUF file at ``path`` (the caller makes it atomic); tokenizer from ``vocab_gguf``."""
    import gguf
    import torch

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs every file at INFO
    w = gguf.GGUFWriter(str(path), arch=ARCH)  # writes general.architecture itself
    for key, value in plan.config.items():
        if key != "general.architecture":
            _add(w, key, value)
    vocab = read_header(vocab_gguf)
    for key, value in vocab.values.items():
        if key.startswith("tokenizer."):
            vtype, sub = vocab.types[key]
            w.add_key_value(key, value, gguf.GGUFValueType(vtype),
                            sub_type=None if sub is None else gguf.GGUFValueType(sub))
    for name, t in plan.tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.int64:
            w.add_tensor(name, t.numpy(), raw_dtype=gguf.GGMLQuantizationType.I64)
        elif t.dtype == torch.bfloat16:
            w.add_tensor(name, t.view(torch.int16).numpy(), raw_shape=list(t.shape),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf(path: str | os.PathLike, target: TargetInfo | None = None) -> list[str]:
    """Problems of an EAGLE-3 GGUF against llama.cpp's layout (empty list = loads as llama.cpp expects).

    Checks the architecture and eagle3 keys, that every required tensor is present with its shape and no
    other tensor is (llama.cpp refuses unused tensors), and that ``d2t`` holds absolute, unique, in-range
    target ids rather than specforge's offsets.
    """
    import numpy as np

    h = read_header(path)
    problems = []
    if h.get("general.architecture") != ARCH:
        return [f"general.architecture is {h.get('general.architecture')!r}, not '{ARCH}'"]
    layer_lists = [h.get(k) for k in LAYER_KEYS]
    if any(not isinstance(v, list) or len(v) != 3 for v in layer_lists):
        problems.append(f"{' / '.join(LAYER_KEYS)} must each hold 3 layer ids, got {layer_lists}")
    for k in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base",
              "target_hidden_size", "norm_before_residual", "vocab_size"):
        if h.get(f"{ARCH}.{k}") is None:
            problems.append(f"key {ARCH}.{k} missing")
    if not h.get("tokenizer.ggml.tokens"):
        problems.append("no tokenizer (llama.cpp compares draft and target vocabularies)")
    if problems:
        return problems
    if h.get(f"{ARCH}.norm_before_residual"):
        problems.append("norm_before_residual is true; specforge drafts add the un-normed residual")
    H, heads = h.get(f"{ARCH}.embedding_length"), h.get(f"{ARCH}.attention.head_count")
    d2t = h.tensors.get("d2t")
    dims = spec.Eagle3Config(
        hidden_size=H, num_attention_heads=heads, num_key_value_heads=h.get(f"{ARCH}.attention.head_count_kv"),
        head_dim=h.get(f"{ARCH}.attention.key_length") or H // heads,
        intermediate_size=h.get(f"{ARCH}.feed_forward_length"), vocab_size=h.get(f"{ARCH}.vocab_size"),
        draft_vocab_size=d2t.shape[0] if d2t is not None else h.get(f"{ARCH}.vocab_size"),
        target_hidden_size=h.get(f"{ARCH}.target_hidden_size"), source=str(path))
    layout = expected_layout(dims, len(layer_lists[0]))
    for name, (shape, kind) in layout.items():
        t = h.tensors.get(name)
        if t is None:
            problems.append(f"tensor {name} missing")
            continue
        if t.shape != shape:
            problems.append(f"tensor {name} has shape {list(t.shape)}, llama.cpp expects {list(shape)}")
        want = {"int64": (GGML_I64,), "norm": (GGML_F32,), "float": tuple(GGML_FLOAT.values())}[kind]
        if t.ggml_type not in want:
            problems.append(f"tensor {name} has ggml type {t.ggml_type}, expected one of {want}")
    problems += [f"unexpected tensor {n} (llama.cpp refuses files with unused tensors)"
                 for n in h.tensors if n not in layout]
    if d2t is not None and d2t.ggml_type == GGML_I64:
        ids = read_tensor_int64(path, d2t).reshape(-1)
        if ids.min() < 0 or ids.max() >= dims.vocab_size:
            problems.append(f"d2t ids outside [0, {dims.vocab_size}): not absolute target ids")
        elif np.unique(ids).size != ids.size:
            problems.append("d2t has duplicate target ids: offsets (target = i + d2t[i]) stored instead of "
                            "absolute ids?")
    if target is not None:
        if dims.hidden_size != target.hidden_size:
            problems.append(f"draft hidden {dims.hidden_size} != target embedding width {target.hidden_size}")
        if max(layer_lists[0]) >= target.num_hidden_layers:
            problems.append(f"target layers {layer_lists[0]} exceed the target's {target.num_hidden_layers} layers")
    return problems


def export_gguf(checkpoint: str | os.PathLike, output: str | os.PathLike, target_model_path: str | None = None,
                target_gguf: str | None = None, options: ExportOptions | None = None,
                force: bool = False) -> Path:
    """Export a draft directory (any specforge layout) to one llama.cpp EAGLE-3 GGUF file, atomically.

    The file appears only after :func:`check_gguf` passed on the written bytes; returns its path.
    """
    from specforge.fileio import atomic_path

    out = Path(output)
    if out.suffix != ".gguf":
        raise SpecforgeError(f"--output {out}: give a file name ending in .gguf.")
    if out.is_dir():
        raise SpecforgeError(f"--output {out} is a directory; give a file name ending in .gguf.")
    if out.exists() and not force:
        raise SpecforgeError(f"--output {out} exists; choose a new name (or pass --force to replace it).")
    vocab = target_gguf_path(target_model_path, target_gguf)
    target = target_info_from_gguf(vocab)
    src = load_source(checkpoint)
    plan = build_gguf(src, target, options or ExportOptions())
    with atomic_path(out) as tmp:
        write_gguf(plan, tmp, vocab)
        problems = check_gguf(tmp, target)
        if problems:
            raise SpecforgeError(f"export refused: {problems[0]}")
    logger.info("wrote %s (%s, target layers %s, draft vocab %d)", out, plan.manifest["float_type"],
                plan.manifest["target_layers"], int(plan.tensors["d2t"].shape[0]))
    return out
