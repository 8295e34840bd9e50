"""The EAGLE-3 facts, each defined once, and the typed draft configuration :class:`Eagle3Config`.

Facts (docs/EAGLE3.md sections 1 and 4): the architecture names, the default draft vocabulary
``min(32000, V)``, the default aux layers ``[2, L//2, L-3]`` and the two engine conventions for aux layer
ids. Internally aux ids are indices into transformers' ``hidden_states`` (``hidden_states[i]`` = input of
decoder layer ``i``; 0 = embeddings). SGLang's ``eagle_config.eagle_aux_hidden_state_layer_ids`` means
"output of layer i" (our index minus one; specforge's draft configs store this field); vLLM's top-level
``eagle_aux_hidden_state_layer_ids`` means "input of layer i" (our index).

A draft config on disk is an HF-style dict (a ``PretrainedConfig`` in memory, the class picked by
``architectures[0]``); :class:`Eagle3Config` is the validated, typed view of its EAGLE-3 part that the
trainer, exporter and validator read instead of ``getattr`` with ad-hoc defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specforge.errors import SpecforgeError

ARCH = "LlamaForCausalLMEagle3"  # the default draft class; SGLang and vLLM serve it under this name
SPECULATORS_ARCH = "Eagle3Speculator"  # vLLM's speculators config
DEFAULT_DRAFT_VOCAB_CAP = 32000
NUM_AUX_STATES = 3
#: aux id fields: SGLang's nested one ("output of layer i") and vLLM's top-level one ("input of layer i")
SGLANG_IDS_FIELD = ("eagle_config", "eagle_aux_hidden_state_layer_ids")
VLLM_IDS_FIELD = "eagle_aux_hidden_state_layer_ids"
#: EAGLE-3.1 options (docs/EAGLE3.md section 1): config field -> what it does; absent means false everywhere
OPTION_FIELDS = ("norm_before_fc", "fc_norm", "norm_output")



@dataclass(frozen=True)
class EngineSupport:
    """What one serving engine loads beyond the plain one-layer EAGLE-3 draft ("" = loads it; otherwise why not)."""

    multi_layer: str
    options: str


#: per engine (docs/EAGLE3.md section 4); export refuses or validate warns with these reasons
ENGINE_SUPPORT = {
    "sglang": EngineSupport(
        multi_layer="SGLang releases before multi-layer EAGLE-3 support refuse num_hidden_layers > 1",
        options="SGLang releases before EAGLE-3.1 ignore these fields and run the draft without them"),
    "vllm": EngineSupport(multi_layer="", options="vLLM releases before EAGLE-3.1 ignore these fields"),
    "llama.cpp": EngineSupport(multi_layer="llama.cpp's EAGLE-3 graph has one block",
                               options="llama.cpp's EAGLE-3 loader does not read these fields"),
}


def default_draft_vocab_size(target_vocab_size: int) -> int:
    """The draft vocabulary size when none is configured: ``min(32000, V)``."""
    return min(DEFAULT_DRAFT_VOCAB_CAP, int(target_vocab_size))


def default_aux_ids(num_layers: int) -> list[int]:
    """EAGLE-3's default aux layers for an ``L``-layer target, as ``hidden_states`` indices."""
    if num_layers < 4:
        raise SpecforgeError(f"EAGLE-3 needs a target with at least 4 layers (got {num_layers}); "
                             "set eagle_config.eagle_aux_hidden_state_layer_ids in the draft config.")
    return [2, num_layers // 2, num_layers - 3]


def to_sglang_ids(ids: list[int]) -> list[int]:
    """Our / vLLM's ids ("input of layer i") -> SGLang's ("output of layer i")."""
    if any(i < 1 for i in ids):
        raise SpecforgeError(f"aux layer ids {ids} include 0 (the embeddings), which SGLang cannot capture; "
                             "train with ids >= 1 to serve with SGLang.")
    return [i - 1 for i in ids]


def from_sglang_ids(ids: list[int]) -> list[int]:
    """Inverse of :func:`to_sglang_ids`."""
    return [i + 1 for i in ids]


def config_dict(config: Any) -> dict:
    """A draft config (``PretrainedConfig``, dict or None) as a plain dict."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return config
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def written_aux_ids(cfg: dict) -> tuple[list[int] | None, list[int] | None]:
    """The aux ids as written in a config: ``(SGLang's eagle_config field, vLLM's top-level field)``."""
    sg = (cfg.get(SGLANG_IDS_FIELD[0]) or {}).get(SGLANG_IDS_FIELD[1])
    top = cfg.get(VLLM_IDS_FIELD)
    return (list(sg) if sg else None), (list(top) if top else None)


def aux_id_fields(ids: list[int], sglang: bool = True) -> dict[str, Any]:
    """The config fields that give ``hidden_states`` ids ``ids`` to each engine in its own convention
    (``sglang=False``: vLLM's field only, as in a speculators config)."""
    out: dict[str, Any] = {}
    if sglang:
        out[SGLANG_IDS_FIELD[0]] = {SGLANG_IDS_FIELD[1]: to_sglang_ids(ids), "use_aux_hidden_state": True}
    out[VLLM_IDS_FIELD] = list(ids)  # vLLM reads this first, "input of layer i"
    return out


def aux_ids_from_config(cfg: dict, speculators: bool = False) -> list[int] | None:
    """The aux ids written in a draft config, as ``hidden_states`` indices (None = defaults).

    A speculators config carries only vLLM's top-level field; a plain config prefers SGLang's
    ``eagle_config`` field (specforge writes it), else the top-level field.
    """
    sg, top = written_aux_ids(cfg)
    if speculators:
        return top
    return from_sglang_ids(sg) if sg else top


def aux_layer_ids(num_layers: int, draft_config: Any = None) -> list[int]:
    """The 3 aux states of an ``num_layers``-layer target as ``hidden_states`` indices, from a draft config.

    The one function that decides the target layers for every stage (train, bench, validate, export round
    trips). Reads SGLang's ``eagle_config`` field, else vLLM's top-level one, else the defaults; both
    fields present but naming different layers is an error (one engine would read layers off by one).
    """
    cfg = config_dict(draft_config)
    speculators = cfg.get("speculators_model_type") is not None
    ids = aux_ids_from_config(cfg, speculators)
    sg, top = written_aux_ids(cfg)
    if not speculators and top and sg and top != from_sglang_ids(sg):
        raise SpecforgeError(
            f"draft config: eagle_config.eagle_aux_hidden_state_layer_ids {list(sg)} (output of layer i) and "
            f"top-level eagle_aux_hidden_state_layer_ids {list(top)} (input of layer i) name different layers; "
            "keep one of them.")
    if ids is None:
        return default_aux_ids(num_layers)
    out = [int(i) for i in ids]
    if len(out) != NUM_AUX_STATES or any(not 1 <= i <= num_layers - 1 for i in out):
        raise SpecforgeError(
            f"aux layer ids select hidden_states {out}: need 3 indices in 1..{num_layers - 1} (inputs of layers; "
            f"eagle_config ids 0..{num_layers - 2} are outputs of layers) for a {num_layers}-layer target.")
    return out


def text_config(config: Any) -> Any:
    """The text part of a (possibly multimodal) target config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


_REQUIRED_INTS = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
_OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "draft_vocab_size", "target_hidden_size", "num_hidden_layers",
                  "max_position_embeddings")


@dataclass(frozen=True)
class Eagle3Config:
    """The sizes and EAGLE-3 options of a Llama-style draft, validated on construction.

    ``H`` = ``hidden_size``, ``Ht`` = ``target_hidden_size``, ``V`` = ``vocab_size`` (the target's),
    ``Vd`` = ``draft_vocab_size``. ``aux_layer_ids`` are ``hidden_states`` indices or None (defaults).
    ``norm_before_fc``: one RMS norm over the concatenated aux states ``[3*Ht]`` before ``fc``;
    ``fc_norm``: one RMS norm per aux state ``[Ht]`` before ``fc``; ``norm_output``: the hidden fed to the
    next draft step is the final-normed output instead of the pre-norm one. ``num_hidden_layers`` > 1: the
    first layer reads the 2H input, later ones are plain decoder layers over H.
    """

    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int = 0  # 0 -> num_attention_heads
    head_dim: int = 0  # 0 -> hidden_size // num_attention_heads
    draft_vocab_size: int = 0  # 0 -> vocab_size (a config without one drafts over the full vocab)
    target_hidden_size: int = 0  # 0 -> hidden_size
    num_hidden_layers: int = 1
    max_position_embeddings: int = 0  # 0 -> unset
    aux_layer_ids: tuple[int, ...] | None = None
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    architecture: str = ARCH
    source: str = field(default="draft config", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        for k in _REQUIRED_INTS + _OPTIONAL_INTS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k in _REQUIRED_INTS else 0):
                raise SpecforgeError(f"{src}: {k} must be a positive integer, got {v!r}; fix the file.")
        for k in OPTION_FIELDS:
            if not isinstance(getattr(self, k), bool):
                raise SpecforgeError(f"{src}: {k} must be true or false, got {getattr(self, k)!r}; fix the file.")
        fill = {"num_key_value_heads": self.num_key_value_heads or self.num_attention_heads,
                "draft_vocab_size": self.draft_vocab_size or self.vocab_size,
                "target_hidden_size": self.target_hidden_size or self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers or 1}
        if not self.head_dim:
            if self.hidden_size % self.num_attention_heads:
                raise SpecforgeError(f"{src}: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                     f"{self.num_attention_heads}; use the target's values (or set head_dim).")
            fill["head_dim"] = self.hidden_size // self.num_attention_heads
        for k, v in fill.items():
            object.__setattr__(self, k, v)
        if self.num_attention_heads % self.num_key_value_heads:
            raise SpecforgeError(f"{src}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                                 f"num_key_value_heads {self.num_key_value_heads}; use the target's values.")
        if self.draft_vocab_size > self.vocab_size:
            raise SpecforgeError(f"{src}: draft_vocab_size {self.draft_vocab_size} exceeds vocab_size "
                                 f"{self.vocab_size}; lower it.")
        if self.aux_layer_ids is not None:
            object.__setattr__(self, "aux_layer_ids", tuple(int(i) for i in self.aux_layer_ids))
            if len(self.aux_layer_ids) != NUM_AUX_STATES:
                raise SpecforgeError(f"{src}: {len(self.aux_layer_ids)} aux layer ids; EAGLE-3 reads exactly 3.")

    @classmethod
    def from_dict(cls, data: dict, source: str = "draft config", speculators: bool = False) -> Eagle3Config:
        """The typed view of a flat draft config dict; one clear line for a missing or invalid field."""
        missing = [k for k in _REQUIRED_INTS if data.get(k) is None]
        if missing:
            raise SpecforgeError(f"{source}: missing {', '.join(missing)}; a draft config must set them (use the "
                                 "target's values, or omit --draft-model-config to derive a config from the target).")
        ids = aux_ids_from_config(data, speculators)
        archs = data.get("architectures") or [ARCH]
        kw: dict[str, Any] = {k: data.get(k) or 0 for k in _REQUIRED_INTS + _OPTIONAL_INTS}
        kw["num_hidden_layers"] = data.get("num_hidden_layers") or 1
        opts: dict[str, Any] = {k: data.get(k, False) for k in OPTION_FIELDS}
        return cls(**kw, **opts, aux_layer_ids=None if ids is None else tuple(ids), architecture=str(archs[0]),
                   source=source)

    @classmethod
    def of(cls, config: Any) -> Eagle3Config:
        """The typed view of an in-memory draft config (``PretrainedConfig`` or dict)."""
        return cls.from_dict(config_dict(config))

    def to_dict(self) -> dict[str, Any]:
        """The model fields as a flat HF-style draft config dict (enough to build the draft class)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _REQUIRED_INTS + _OPTIONAL_INTS
                               if getattr(self, k)}
        out.update(self.options, architectures=[self.architecture])
        if self.aux_layer_ids is not None:
            out[VLLM_IDS_FIELD] = list(self.aux_layer_ids)
        return out

    @property
    def options(self) -> dict[str, bool]:
        """The EAGLE-3.1 options that are on (``{}`` for a plain EAGLE-3 draft)."""
        return {k: True for k in OPTION_FIELDS if getattr(self, k)}

    def check_target(self, target_config: Any) -> None:
        """Raise one clear line when this draft cannot sit on the target (hidden size or vocab mismatch)."""
        t = text_config(target_config)
        if self.target_hidden_size != t.hidden_size:
            raise SpecforgeError(
                f"draft config expects target hidden size {self.target_hidden_size} but the target has "
                f"{t.hidden_size}; set target_hidden_size (and hidden_size) in --draft-model-config to match, or "
                "omit it to derive one.")
        if self.hidden_size != t.hidden_size:
            raise SpecforgeError(
                f"draft hidden_size {self.hidden_size} differs from the target's {t.hidden_size}, but the draft "
                "reuses the target's embedding; use the target's hidden size in --draft-model-config.")
        if self.vocab_size != t.vocab_size:
            raise SpecforgeError(
                f"draft vocab_size {self.vocab_size} differs from the target's {t.vocab_size}; set vocab_size "
                "to the target's in --draft-model-config.")
        if self.aux_layer_ids is not None:
            aux_layer_ids(int(t.num_hidden_layers), {VLLM_IDS_FIELD: list(self.aux_layer_ids)})


def derive_draft_fields(target_config: Any, draft_vocab_size: int | None = None) -> dict[str, Any]:
    """The fields of a 1-layer ``LlamaForCausalLMEagle3`` config derived from a target config.

    Copies hidden size, heads, KV heads, head dim, intermediate size, rope, max positions, rms eps,
    activation and vocab; ``draft_vocab_size`` defaults to :func:`default_draft_vocab_size`.
    """
    t = text_config(target_config)
    V = t.vocab_size
    Vd = default_draft_vocab_size(V) if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < Vd <= V:
        raise SpecforgeError(f"draft_vocab_size {Vd} must be in 1..{V} (the target vocab size).")
    H = t.hidden_size
    kw: dict[str, Any] = dict(  # noqa: C408  (keyword form mirrors the config fields)
        architectures=[ARCH], hidden_size=H, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=getattr(t, "num_key_value_heads", None) or t.num_attention_heads,
        head_dim=getattr(t, "head_dim", None) or H // t.num_attention_heads,
        intermediate_size=t.intermediate_size, num_hidden_layers=1, vocab_size=V, draft_vocab_size=Vd,
        target_hidden_size=H, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=getattr(t, "rms_norm_eps", 1e-6), hidden_act=getattr(t, "hidden_act", "silu"),
        tie_word_embeddings=False, pad_token_id=getattr(t, "pad_token_id", None),
        bos_token_id=getattr(t, "bos_token_id", None), eos_token_id=getattr(t, "eos_token_id", None),
    )
    rope = getattr(t, "rope_parameters", None)
    if rope:
        kw["rope_parameters"] = dict(rope)
    else:
        kw["rope_theta"] = getattr(t, "rope_theta", 10000.0)
    return kw
