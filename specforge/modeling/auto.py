"""Auto registries (the seed's API): drafts chosen by ``architectures[0]``, TP targets by config class.

Register a custom draft::

    AutoEagle3DraftModel._model_mapping[MyModelConfig] = [MyModelEagle3]
    AutoDraftModelConfig._config_mapping["MyModelEagle3"] = MyModelConfig

and a tensor-parallel target: ``AutoDistributedTargetModel._model_mapping[MyConfig] = [MyModelForCausalLM]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from specforge.errors import SpecforgeError
from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
from specforge.modeling.target.llama_tp import LlamaTPForCausalLM, Qwen2TPForCausalLM, Qwen3TPForCausalLM

DRAFT_ARCH = "LlamaForCausalLMEagle3"


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


class _AutoModelBase:
    """Pick a class from ``_model_mapping`` (config class -> class or list of classes)."""

    _model_mapping: dict = {}
    _kind = "model"

    @classmethod
    def _get_model_class(cls, config):
        classes = None
        for conf_cls in type(config).__mro__:  # exact class first, then its bases
            if conf_cls in cls._model_mapping:
                classes = _as_list(cls._model_mapping[conf_cls])
                break
        if not classes:
            known = ", ".join(c.__name__ for c in cls._model_mapping) or "none"
            raise SpecforgeError(
                f"no {cls._kind} registered for config class {type(config).__name__} (registered: {known}); "
                f"add it to {cls.__name__}._model_mapping.")
        arch = (getattr(config, "architectures", None) or [None])[0]
        for c in classes:
            if c.__name__ == arch:
                return c
        return classes[0]


class AutoEagle3DraftModel(_AutoModelBase):
    """Draft models by config class; the class named by ``architectures[0]`` wins among candidates."""

    # the model mapping is a plain registry: add entries for custom drafts
    _model_mapping = {LlamaConfig: [LlamaForCausalLMEagle3]}
    _kind = "EAGLE-3 draft model"

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build a randomly initialised draft from a config (its embedding still has to be loaded)."""
        return cls._get_model_class(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs):
        """Load ``DIR/config.json`` + ``DIR/model.safetensors`` (strict, except the frozen embedding)."""
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise SpecforgeError(f"{path} has no model.safetensors; pass a draft checkpoint directory "
                                 "such as OUTPUT_DIR/epoch_0.")
        model = cls.from_config(AutoDraftModelConfig.from_file(path), **kwargs)
        model.load_checkpoint_state(load_file(str(weights)), source=str(weights))
        return model


class AutoDraftModelConfig:
    """Draft configs keyed by ``architectures[0]`` of a config.json."""

    _config_mapping = {DRAFT_ARCH: LlamaConfig}

    @classmethod
    def from_dict(cls, data: dict, source: str = "draft config"):
        """Build the config class registered for ``data['architectures'][0]``."""
        archs = data.get("architectures") or []
        if not archs:
            raise SpecforgeError(f"{source} has no 'architectures' entry; set it to e.g. [\"{DRAFT_ARCH}\"].")
        if archs[0] not in cls._config_mapping:
            raise SpecforgeError(
                f"{source}: unknown draft architecture '{archs[0]}'; known: {', '.join(sorted(cls._config_mapping))}.")
        config_cls = cls._config_mapping[archs[0]]
        if issubclass(config_cls, LlamaConfig):
            check_llama_draft_fields(data, source)
        try:
            return config_cls.from_dict(dict(data))
        except (TypeError, ValueError) as e:  # the config library's own validators (StrictDataclass*, ...)
            detail = " ".join(str(e).split())[:300]
            raise SpecforgeError(f"{source}: invalid draft config ({detail}); fix the file.") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        """Read a draft config.json (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise SpecforgeError(f"draft config {p} does not exist; check --draft-model-config.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecforgeError(f"draft config {p} is not valid JSON ({e.__class__.__name__}: line "
                                 f"{getattr(e, 'lineno', '?')}); fix the file.") from None
        if not isinstance(data, dict):
            raise SpecforgeError(f"draft config {p} must hold a JSON object.")
        return cls.from_dict(data, source=str(p))


class AutoDistributedTargetModel(_AutoModelBase):
    """Tensor-parallel target implementations (``DistributedTargetModel`` subclasses) by config class.

    The HF backend serves ``--tp-size 1``; ``--tp-size > 1`` builds the class registered here with a
    ``tp_group`` and loads its shards (:func:`specforge.modeling.loading.load_tp_target`).
    """

    _model_mapping: dict = {
        LlamaConfig: [LlamaTPForCausalLM],
        Qwen2Config: [Qwen2TPForCausalLM],
        Qwen3Config: [Qwen3TPForCausalLM],
    }
    _kind = "tensor-parallel target model"

    @classmethod
    def from_config(cls, config, **kwargs):
        """Instantiate the registered TP target for ``config`` (``tp_group=`` in kwargs; weights via ``load_weights``)."""
        return cls._get_model_class(config)(config, **kwargs)


# Fields a Llama-style draft config must spell out: the config class would otherwise fill in Llama-2-7B
# defaults (hidden 4096, vocab 32000, ...) and the error would blame values the user never wrote.
_REQUIRED_INTS = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
_OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "draft_vocab_size", "target_hidden_size", "num_hidden_layers",
                  "max_position_embeddings")


def check_llama_draft_fields(data: dict, source: str = "draft config") -> None:
    """One clear line for a missing, non-integer or inconsistent field of a Llama-style draft config."""
    missing = [k for k in _REQUIRED_INTS if data.get(k) is None]
    if missing:
        raise SpecforgeError(f"{source}: missing {', '.join(missing)}; a draft config must set them (use the "
                             "target's values, or omit --draft-model-config to derive a config from the target).")
    for k in _REQUIRED_INTS + _OPTIONAL_INTS:
        v = data.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SpecforgeError(f"{source}: {k} must be a positive integer, got {v!r}; fix the file.")
    heads, kv = data["num_attention_heads"], data.get("num_key_value_heads") or data["num_attention_heads"]
    if data.get("head_dim") is None and data["hidden_size"] % heads:
        raise SpecforgeError(f"{source}: hidden_size {data['hidden_size']} is not divisible by num_attention_heads "
                             f"{heads}; use the target's values (or set head_dim).")
    if heads % kv:
        raise SpecforgeError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}; "
                             "use the target's values.")


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def derive_draft_config(target_config, draft_vocab_size: int | None = None) -> LlamaConfig:
    """A 1-layer ``LlamaForCausalLMEagle3`` config from a target config (no ``--draft-model-config``).

    Copies hidden size, heads, KV heads, head dim, intermediate size, rope, max positions, rms eps and
    vocab; ``draft_vocab_size`` defaults to ``min(32000, target vocab)``.
    """
    t = _text_config(target_config)
    V = t.vocab_size
    Vd = min(32000, V) if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < Vd <= V:
        raise SpecforgeError(f"draft_vocab_size {Vd} must be in 1..{V} (the target vocab size).")
    H = t.hidden_size
    kw = dict(
        architectures=[DRAFT_ARCH], hidden_size=H, num_attention_heads=t.num_attention_heads,
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
    return LlamaConfig(**kw)


def check_draft_target_compat(draft_config, target_config) -> None:
    """Raise one clear line when the draft cannot sit on this target (hidden size or vocab mismatch)."""
    t = _text_config(target_config)
    Ht = getattr(draft_config, "target_hidden_size", None) or draft_config.hidden_size
    if Ht != t.hidden_size:
        raise SpecforgeError(
            f"draft config expects target hidden size {Ht} but the target has {t.hidden_size}; set "
            "target_hidden_size (and hidden_size) in --draft-model-config to match, or omit it to derive one.")
    if draft_config.hidden_size != t.hidden_size:
        raise SpecforgeError(
            f"draft hidden_size {draft_config.hidden_size} differs from the target's {t.hidden_size}, but the draft "
            "reuses the target's embedding; use the target's hidden size in --draft-model-config.")
    if draft_config.vocab_size != t.vocab_size:
        raise SpecforgeError(
            f"draft vocab_size {draft_config.vocab_size} differs from the target's {t.vocab_size}; set vocab_size "
            "to the target's in --draft-model-config.")
    Vd = getattr(draft_config, "draft_vocab_size", None) or draft_config.vocab_size
    if Vd > t.vocab_size:
        raise SpecforgeError(f"draft_vocab_size {Vd} exceeds the target vocab {t.vocab_size}; lower it.")


__all__ = [
    "AutoDistributedTargetModel", "AutoDraftModelConfig", "AutoEagle3DraftModel",
    "check_draft_target_compat", "derive_draft_config",
]
