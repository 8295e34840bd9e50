"""What an EAGLE-3 draft directory must contain: dimensions, tensor names/shapes, layer-id conventions.

This module is the single source of truth for the exporters and the validator. A draft directory is
an HF-style ``config.json`` plus ``*.safetensors``; in specforge's own layout (training checkpoints,
``--to hf``) tensors are named::

    midlayer.self_attn.{q,k,v}_proj.weight   [heads*hd | kvh*hd, 2H]   (input = cat(embeds, hidden))
    midlayer.self_attn.o_proj.weight         [H, heads*hd]
    midlayer.mlp.{gate,up}_proj.weight       [I, H];  midlayer.mlp.down_proj.weight [H, I]
    midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight  [H]
    fc.weight [H, 3*Ht]   norm.weight [H]   lm_head.weight [Vd, H]   d2t int64 [Vd]   t2d bool [V]

**Aux layer ids.** Internally (decoder, manifest) aux ids are indices into HF ``hidden_states``
("input of decoder layer i"; 0 = embeddings). ``eagle_config.eagle_aux_hidden_state_layer_ids`` is
SGLang's field and means "output of layer i" (SGLang captures before layer i+1): that is also how
specforge's draft configs and checkpoints store it (``specforge.modeling.target.aux_layer_ids``), so it is
our index minus one. vLLM reads the *top-level* ``eagle_aux_hidden_state_layer_ids`` first, meaning "input
of layer i" (it captures ``hidden + residual`` before running layer i) = our index; it falls back to
``eagle_config`` with that same meaning, which is off by one for SGLang-style configs. All engines
default to ``[2, L//2, L-3]`` (as HF indices) when no ids are written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError

ARCH = "LlamaForCausalLMEagle3"
SPECULATORS_ARCH = "Eagle3Speculator"
MANIFEST = "specforge_export.json"
# layouts: specforge's own (checkpoint / --to hf), SGLang + vLLM plain EAGLE-3 (same file set), speculators
LAYOUTS = ("checkpoint", "hf", "sglang", "vllm-eagle3", "vllm-speculators", "eagle3")

MIDLAYER_SUFFIXES = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "hidden_norm.weight", "post_attention_layernorm.weight",
)
EMBED_KEYS = ("embed_tokens.weight", "model.embed_tokens.weight")


def layer_prefix(layout: str) -> str:
    """Name prefix of the decoder layer's tensors in a layout (speculators names it ``layers.0.``)."""
    return "layers.0." if layout == "vllm-speculators" else "midlayer."


@dataclass(frozen=True)
class DraftDims:
    """Sizes of a one-layer EAGLE-3 Llama draft, read from its (flattened) config."""

    hidden_size: int  # H
    num_heads: int
    num_kv_heads: int
    head_dim: int  # hd
    intermediate_size: int  # I
    vocab_size: int  # V (target vocab)
    draft_vocab_size: int  # Vd
    target_hidden_size: int  # Ht

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DraftDims":
        """Read the sizes; raises :class:`SpecforgeError` naming the first missing/invalid field."""
        need = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
        for k in need:
            if not isinstance(cfg.get(k), int) or cfg[k] <= 0:
                raise SpecforgeError(f"config.json: field '{k}' missing or not a positive integer; "
                                     "re-export from the training checkpoint.")
        h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        hd = cfg.get("head_dim") or h // heads
        dv = cfg.get("draft_vocab_size") or cfg["vocab_size"]
        return cls(h, heads, cfg.get("num_key_value_heads") or heads, int(hd), cfg["intermediate_size"],
                   cfg["vocab_size"], int(dv), cfg.get("target_hidden_size") or h)


def expected_tensors(dims: DraftDims, prefix: str = "midlayer.") -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor a complete draft must hold: ``name -> (shape, kind)``, kind ``float|int64|bool``."""
    h, hd, inter = dims.hidden_size, dims.head_dim, dims.intermediate_size
    q, kv = dims.num_heads * hd, dims.num_kv_heads * hd
    shapes = {
        "self_attn.q_proj.weight": (q, 2 * h), "self_attn.k_proj.weight": (kv, 2 * h),
        "self_attn.v_proj.weight": (kv, 2 * h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h), "mlp.down_proj.weight": (h, inter),
        "input_layernorm.weight": (h,), "hidden_norm.weight": (h,), "post_attention_layernorm.weight": (h,),
    }
    out = {prefix + k: (v, "float") for k, v in shapes.items()}
    out.update({
        "fc.weight": ((h, 3 * dims.target_hidden_size), "float"), "norm.weight": ((h,), "float"),
        "lm_head.weight": ((dims.draft_vocab_size, h), "float"),
        "d2t": ((dims.draft_vocab_size,), "int64"), "t2d": ((dims.vocab_size,), "bool"),
    })
    return out


def rename_layer(state: dict, src_prefix: str, dst_prefix: str) -> dict:
    """Rename decoder-layer tensors ``src_prefix*`` -> ``dst_prefix*`` (others unchanged, order kept)."""
    if src_prefix == dst_prefix:
        return dict(state)
    return {(dst_prefix + k[len(src_prefix):] if k.startswith(src_prefix) else k): v for k, v in state.items()}


def default_aux_ids(num_layers: int) -> list[int]:
    """EAGLE-3's default aux layers for an ``L``-layer target, as HF ``hidden_states`` indices."""
    return [2, num_layers // 2, num_layers - 3]


def to_sglang_ids(ids: list[int]) -> list[int]:
    """specforge/vLLM ids ("input of layer i") -> SGLang's ("output of layer i")."""
    if any(i < 1 for i in ids):
        raise SpecforgeError(f"aux layer ids {ids} include 0 (the embeddings), which SGLang cannot capture; "
                             "train with ids >= 1 to serve with SGLang.")
    return [i - 1 for i in ids]


def from_sglang_ids(ids: list[int]) -> list[int]:
    """Inverse of :func:`to_sglang_ids`."""
    return [i + 1 for i in ids]


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
    if layout != "vllm-speculators":
        return dict(cfg)
    flat = dict(cfg.get("transformer_layer_config") or {})
    for k in ("draft_vocab_size", "target_hidden_size", "norm_before_residual"):
        if cfg.get(k) is not None:
            flat[k] = cfg[k]
    return flat


def specforge_aux_ids(cfg: dict, layout: str) -> list[int] | None:
    """The aux layer ids of a draft config as HF ``hidden_states`` indices (None = defaults).

    Speculators configs carry only the vLLM (top-level) field; plain configs prefer SGLang's
    ``eagle_config`` field (specforge writes it), else the top-level vLLM field.
    """
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    if layout == "vllm-speculators":
        return list(top) if top else None
    sg = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if sg:
        return from_sglang_ids(list(sg))
    return list(top) if top else None


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
